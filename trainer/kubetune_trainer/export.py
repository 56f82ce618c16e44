"""Writing the final model as a plain Hugging Face directory (safetensors + tokenizer or image processor).

Under ZeRO-3 each rank holds only a shard of every weight, so the full weights
are first gathered to rank 0, which alone writes. For LoRA the adapter is
written; when merging is asked for, it is then folded into a fresh copy of the
base model, so the output loads with plain transformers and no peft. The
directory appears only when complete (written aside, then renamed).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from kubetune_api import Task


def gather_state_dict(module: torch.nn.Module, is_main: bool) -> dict[str, torch.Tensor]:
    """Full CPU copies of the module's state on rank 0 (empty elsewhere); call on every rank."""
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    copies: dict[int, torch.Tensor] = {}  # tied weights (one Parameter, two names) stay one tensor
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in copies:
            if is_main:
                state[name] = copies[id(tensor)]
            continue
        if hasattr(tensor, "ds_id"):  # a ZeRO-3 partitioned parameter: all ranks must join the gather
            with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                if is_main:
                    state[name] = copies[id(tensor)] = tensor.detach().cpu().clone()
        elif is_main:
            state[name] = copies[id(tensor)] = tensor.detach().cpu().clone()
        if not is_main:
            copies[id(tensor)] = tensor  # only to recognise a tied name later; nothing is kept
    return state


def _replace_dir(tmp: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def export_model(module: Any, state: dict[str, torch.Tensor], *, output_dir: str, preprocessor: Any,
                 base_model_path: str, merge_lora: bool, task: Task = "causal-lm") -> Path:
    """Write the trained model (rank 0 only) from the gathered `state`, with its tokenizer or image
    processor; returns the directory."""
    target = Path(output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        is_lora = hasattr(module, "peft_config")
        if is_lora and merge_lora:
            _write_merged(module, state, tmp, base_model_path, task)
        else:
            if not is_lora and hasattr(module.config, "use_cache"):
                module.config.use_cache = True  # turned off for training; generation wants it
            # save_pretrained with an explicit state dict never reads the (partitioned) parameters.
            module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        preprocessor.save_pretrained(tmp)
        _replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_merged(module: Any, state: dict[str, torch.Tensor], out: Path, base_model_path: str, task: Task) -> None:
    from peft import PeftModel

    from kubetune_trainer.modeling import model_class

    with tempfile.TemporaryDirectory(dir=out.parent) as adapter_dir:
        module.save_pretrained(adapter_dir, state_dict=state, safe_serialization=True)
        # The trained model's config: for a classifier, its labels and the size of its new head.
        config = module.get_base_model().config
        base = model_class(task).from_pretrained(base_model_path, config=config, dtype="auto",
                                                 ignore_mismatched_sizes=task != "causal-lm")
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
