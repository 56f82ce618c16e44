"""The trainer's own typed config: what one training run needs, nothing more.

Core modules take these dataclasses (or plain values from them), never the raw
FineTuneJob spec, so they can be built and tested before and apart from the
shared API package. `spec_adapter` builds one from a FineTuneJob spec; a
developer's config file (JSON or YAML, read by jobfile.py) is parsed once, here,
by `from_dict`; keys may be snake_case or camelCase (the spec's spelling).
Every field has a docstring; paths in error messages use the snake_case names.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Literal, TypeVar, Union

from kubetune_trainer.errors import ConfigError

DatasetFormat = Literal["text", "prompt-completion", "chat"]
Precision = Literal["bf16", "fp16", "fp32"]
LrSchedulerKind = Literal["linear", "cosine", "constant"]
ALL_LINEAR = "all-linear"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelConfig:
    path: str
    """Local directory of a Hugging Face causal LM (config.json, safetensors, tokenizer)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model (transformers' trust_remote_code)."""


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    """Rank of the low-rank update matrices."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA branch's input."""
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """Names of the linear layers that get adapters (e.g. q_proj, k_proj, v_proj, o_proj), or
    ["all-linear"]: every linear layer but the output head."""

    @property
    def all_linear(self) -> bool:
        return self.target_modules == (ALL_LINEAR,)

    def __post_init__(self) -> None:
        _check(self.r >= 1, f"method.lora.r must be >= 1 (got {self.r})")
        _check(self.alpha >= 1, f"method.lora.alpha must be >= 1 (got {self.alpha})")
        _check(0.0 <= self.dropout < 1.0, f"method.lora.dropout must be in [0, 1) (got {self.dropout})")
        _check(bool(self.target_modules), "method.lora.target_modules must name at least one module")


@dataclass(frozen=True)
class MethodConfig:
    type: Literal["full", "lora"] = "full"
    """`full` trains every weight; `lora` trains only adapters on a frozen base model."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Adapter settings, used when type is `lora`."""


@dataclass(frozen=True)
class DataConfig:
    train: str
    """Training data: a .jsonl or .parquet file or a folder of them (a local path, or a URI that
    the recipe's FileAccess reads: s3://, pvc://, hf://datasets/)."""
    format: DatasetFormat = "text"
    """Record shape: text {"text"}, prompt-completion {"prompt","completion"}, chat {"messages"}."""
    eval: str | None = None
    """Held-out data in the same format; when absent, eval_fraction of train is held out."""
    eval_fraction: float = 0.0
    """Share of the training records held out for evaluation when `eval` is not given."""
    max_seq_length: int = 2048
    """Tokens per training sequence; must not exceed the model's max_position_embeddings."""
    packing: bool = True
    """Concatenate examples into full max_seq_length blocks instead of padding each one."""
    fields: Mapping[str, str] = field(default_factory=dict)
    """Record keys to read instead of the usual names, e.g. {"prompt": "question"}."""

    def __post_init__(self) -> None:
        _check(self.max_seq_length >= 2, f"data.max_seq_length must be >= 2 (got {self.max_seq_length})")
        _check(0.0 <= self.eval_fraction < 1.0,
               f"data.eval_fraction must be in [0, 1) (got {self.eval_fraction})")


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 1
    """Passes over the training data (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps; takes precedence over epochs."""
    learning_rate: float = 2e-5
    """Peak learning rate, reached at the end of warmup."""
    lr_scheduler: LrSchedulerKind = "cosine"
    """Decay after warmup: linear or cosine to min_learning_rate, or constant."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup from ~0 to learning_rate."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction of all steps, when warmup_steps is 0."""
    min_learning_rate: float = 0.0
    """Learning rate at the end of the decay."""
    weight_decay: float = 0.0
    """AdamW weight decay, applied to matrices only (not to biases and norm weights)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    micro_batch_size: int = 1
    """Sequences per forward pass on each process (GPU)."""
    global_batch_size: int | None = None
    """Sequences per optimizer step over all processes; default micro_batch_size * world size.
    Must be a multiple of micro_batch_size * world size (the quotient is gradient accumulation)."""
    precision: Precision = "bf16"
    """Training precision. On CPU DeepSpeed supports bf16 and fp32, not fp16."""
    seed: int = 42
    """Seed for data order, eval split, weight init of adapters and dropout."""
    eval_every_steps: int = 0
    """Evaluate every this many optimizer steps (0: only at the end)."""
    eval_at_start: bool = False
    """Evaluate once before training: the base model's eval loss, to compare against."""
    log_every_steps: int = 1
    """Log a step line every this many optimizer steps."""

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"training.epochs must be >= 1 (got {self.epochs})")
        _check(self.max_steps is None or self.max_steps >= 1,
               f"training.max_steps must be >= 1 when set (got {self.max_steps})")
        _check(self.learning_rate > 0, f"training.learning_rate must be > 0 (got {self.learning_rate})")
        _check(0 <= self.min_learning_rate <= self.learning_rate,
               f"training.min_learning_rate must be in [0, learning_rate] (got {self.min_learning_rate})")
        _check(self.warmup_steps >= 0, f"training.warmup_steps must be >= 0 (got {self.warmup_steps})")
        _check(0.0 <= self.warmup_ratio < 1.0,
               f"training.warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        _check(self.weight_decay >= 0, f"training.weight_decay must be >= 0 (got {self.weight_decay})")
        _check(self.max_grad_norm >= 0, f"training.max_grad_norm must be >= 0 (got {self.max_grad_norm})")
        _check(self.micro_batch_size >= 1,
               f"training.micro_batch_size must be >= 1 (got {self.micro_batch_size})")
        _check(self.global_batch_size is None or self.global_batch_size >= 1,
               f"training.global_batch_size must be >= 1 when set (got {self.global_batch_size})")
        _check(self.eval_every_steps >= 0,
               f"training.eval_every_steps must be >= 0 (got {self.eval_every_steps})")
        _check(self.log_every_steps >= 1,
               f"training.log_every_steps must be >= 1 (got {self.log_every_steps})")

    def warmup_steps_for(self, total_steps: int) -> int:
        """Warmup steps of a run of `total_steps` steps."""
        return self.warmup_steps or int(total_steps * self.warmup_ratio)


@dataclass(frozen=True)
class DeepSpeedSettings:
    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 0 plain data parallel, 1 shards optimizer state, 2 also gradients, 3 also weights."""
    offload: Literal["none", "cpu"] = "none"
    """Move optimizer state (and weights, at stage 3) to host memory; needs zero_stage >= 1."""
    config: Mapping[str, Any] = field(default_factory=dict)
    """Raw DeepSpeed config keys, deep-merged over the generated config last."""

    def __post_init__(self) -> None:
        _check(self.offload == "none" or self.zero_stage >= 1,
               "deepspeed.offload=cpu needs deepspeed.zero_stage >= 1 (got 0)")


@dataclass(frozen=True)
class CheckpointConfig:
    uri: str | None = None
    """Where committed checkpoints live: s3://bucket/prefix/ or a local folder; none: no checkpoints.
    Each is a step-<8 digits>/ folder committed by its manifest.json (see manifest.py)."""
    every_steps: int = 0
    """Save every this many optimizer steps, and after the last (0: never)."""
    keep_last: int = 3
    """Committed checkpoints to keep; older ones are deleted after each commit."""
    resume: bool = True
    """Resume from the newest committed checkpoint under `uri` when there is one."""

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, f"checkpoint.every_steps must be >= 0 (got {self.every_steps})")
        _check(self.keep_last >= 1, f"checkpoint.keep_last must be >= 1 (got {self.keep_last})")
        _check(self.every_steps == 0 or self.uri is not None,
               "checkpoint.every_steps needs checkpoint.uri")


@dataclass(frozen=True)
class OutputConfig:
    dir: str
    """Local directory the final model (safetensors + tokenizer) is written to."""
    uri: str | None = None
    """Where the final model is uploaded with its manifest: s3://bucket/prefix/ or a local folder;
    none: it stays in `dir`."""
    merge_lora: bool = True
    """For LoRA: write the base model with adapters merged in; otherwise only the adapter."""


@dataclass(frozen=True)
class StorageConfig:
    """How to reach the S3-compatible store of s3:// URIs (spec.storage; AWS_ENDPOINT_URL wins)."""

    endpoint: str | None = None
    """Endpoint URL; none: AWS S3 of `region`."""
    region: str = "us-east-1"
    """Region, for request signing."""
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """path (MinIO and most S3-compatible stores), virtual, or auto."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs."""

    model: ModelConfig
    """The model to fine-tune."""
    data: DataConfig
    """Training and evaluation data."""
    output: OutputConfig
    """Where the final model goes."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """Full fine-tuning or LoRA."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Optimization and schedule."""
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)
    """ZeRO stage, offload and raw overrides."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints, their storage and resume."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """The S3-compatible store of s3:// locations."""


# --- parsing: plain dicts (from JSON/YAML) -> frozen dataclasses, with errors naming the field.

T = TypeVar("T")


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        return from_dict(typing.cast(type, tp), value, where)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool):
            allowed = ", ".join(str(c) for c in choices)
            raise ConfigError(f"{where} must be one of {allowed} (got {value!r})")
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list (got {value!r})")
        item = typing.get_args(tp)[0]
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is Mapping or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping (got {value!r})")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false (got {value!r})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer (got {value!r})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number (got {value!r})")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a non-empty string (got {value!r})")
        return value
    raise TypeError(f"unsupported config field type {tp!r} at {where}")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a plain mapping, accepting snake_case or camelCase keys."""
    label = where or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label} must be a mapping (got {type(data).__name__})")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = _snake(str(key))
        path = f"{where}.{name}" if where else name
        if name not in known:
            raise ConfigError(f"{path}: unknown field (known: {', '.join(known)})")
        kwargs[name] = _convert(hints[name], value, path)
    for name, f in known.items():
        if name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
            path = f"{where}.{name}" if where else name
            raise ConfigError(f"{path} is required")
    return cls(**kwargs)
