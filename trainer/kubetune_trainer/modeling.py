"""Loading the tokenizer and the model to train: full fine-tuning or LoRA adapters.

Models come from a local directory through transformers' Auto classes (how the
directory got there, from S3, a PVC or the hub, is not this module's concern).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from kubetune_api import FineTuneJobSpec, LoraSpec
from kubetune_trainer.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The model's tokenizer; models without a pad token pad with EOS (padding is masked anyway)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ConfigError(f"the model in {path}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def max_positions(path: str, trust_remote_code: bool = False) -> int | None:
    """The model's longest sequence (max_position_embeddings or n_positions), from its config alone."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"the model in {path}: cannot read its config.json "
                          f"({str(e).splitlines()[0]})") from None
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if value else None


def _lora(model: torch.nn.Module, lora: LoraSpec) -> torch.nn.Module:
    import peft

    targets = lora.peft_target_modules
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(targets) - names) if isinstance(targets, list) else []
    if missing:
        raise ConfigError(f"spec.method.lora.targetModules: the model has no module named "
                          f"{', '.join(missing)}; e.g. q_proj, k_proj, v_proj, o_proj for Llama")
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=targets, task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def load_model(path: str, spec: FineTuneJobSpec) -> torch.nn.Module:
    """The causal LM in `path`, in the spec's training precision, with LoRA adapters for method lora."""
    from transformers import AutoModelForCausalLM

    try:
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[spec.training.precision],
                                                          trust_remote_code=spec.model.trust_remote_code)
    except OSError as e:
        raise ConfigError(f"the model in {path}: cannot load it ({str(e).splitlines()[0]})") from None
    model.config.use_cache = False  # the KV cache only helps generation
    if spec.method.gradient_checkpointing:
        # Non-reentrant checkpointing also works when only adapters require grad.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = spec.method.effective_lora
    if lora is not None:
        model = _lora(model, lora)
    return model


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups: matrices decay, biases and norm weights do not."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]  # LoRA has no 1-d trainables; ZeRO dislikes empty groups


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (before any ZeRO partitioning)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
