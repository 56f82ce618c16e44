"""How a job trains: which weights, for how long, with which batches and optimizer
settings, and how DeepSpeed shards the work.

Part of the FineTuneJob spec (see spec.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import ApiModel, Rule
from .kube import DEEPSPEED_BATCH_KEYS, DeepSpeedConfig

MethodType = Literal["full", "lora"]
Precision = Literal["bf16", "fp16", "fp32"]
LrScheduler = Literal["linear", "cosine", "constant"]
Offload = Literal["none", "cpu"]


class LoraSpec(ApiModel):
    """Low-rank adapter (LoRA) settings."""

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the adapter matrices.")
    alpha: int = Field(
        default=32,
        ge=1,
        le=16384,
        description="Scale numerator: adapter updates are scaled by alpha / r.",
    )
    dropout: float = Field(
        default=0.05, ge=0, lt=1, description="Dropout probability on the adapter inputs (0 to 1)."
    )
    target_modules: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(max_length=64)]
        | None
    ) = Field(
        default=None,
        description="Names, or name suffixes, of the modules that get adapters, e.g. "
        "[q_proj, v_proj]. Unset: every linear layer except the output head (PEFT's all-linear).",
    )

    @property
    def peft_target_modules(self) -> list[str] | str:
        """The value for peft.LoraConfig(target_modules=...)."""
        return list(self.target_modules) if self.target_modules else "all-linear"


class FreezeSpec(ApiModel):
    """Weights a full fine-tune leaves exactly as they are."""

    embeddings: bool = Field(
        default=False,
        description="Freeze the input embeddings (the token embeddings, and the position and "
        "token-type embeddings of encoders). A causal LM whose output head shares the token "
        "embeddings keeps that head frozen too.",
    )
    bottom_layers: int = Field(
        default=0,
        ge=0,
        le=10000,
        description="Freeze the first N transformer blocks (counted from the input), found as "
        "the model's repeated layers (the classes transformers lists in _no_split_modules).",
    )
    modules: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=64)]
        | None
    ) = Field(
        default=None,
        description="Patterns (shell-style: *, ?, [...]) of parameter names to freeze, e.g. "
        "['*.layer_norm.*', 'model.layers.0.*']. Unset: none.",
    )


class MethodSpec(ApiModel):
    """Which weights are trained."""

    type: MethodType = Field(
        default="full",
        description="full: update every weight of the model. lora: train low-rank adapters "
        "and keep the base weights frozen, using far less GPU memory.",
    )
    lora: LoraSpec | None = Field(
        default=None,
        description="LoRA settings; only with type lora. Unset: the defaults of each LoRA field.",
    )
    gradient_checkpointing: bool = Field(
        default=True,
        description="Recompute activations in the backward pass instead of storing them: about "
        "a third more compute for much less GPU memory.",
    )
    freeze: FreezeSpec | None = Field(
        default=None,
        description="Weights a full fine-tune does not train (they stay bit-identical). Only "
        "with type full (LoRA freezes every base weight already). Unset: train every weight.",
    )

    RULES = (
        Rule(
            field="lora",
            cel="self.type == 'lora' || !has(self.lora)",
            message="applies only to method type lora; remove it or set type: lora",
            holds=lambda m: m.type == "lora" or m.lora is None,
            reason="FieldValueForbidden",
        ),
        Rule(
            field="freeze",
            cel="self.type == 'full' || !has(self.freeze)",
            message="applies only to method type full; remove it (LoRA trains adapters only)",
            holds=lambda m: m.type == "full" or m.freeze is None,
            reason="FieldValueForbidden",
        ),
    )

    @property
    def effective_lora(self) -> LoraSpec | None:
        """The LoRA settings in force: None for a full fine-tune."""
        if self.type != "lora":
            return None
        return self.lora or LoraSpec()


class TrainingSpec(ApiModel):
    """Length of training, optimizer and batch settings."""

    epochs: int | None = Field(
        default=None,
        ge=1,
        le=10000,
        description="Passes over the training records. Set exactly one of epochs and maxSteps.",
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Optimizer steps to run (one step consumes globalBatchSize sequences). "
        "Set exactly one of epochs and maxSteps.",
    )
    learning_rate: float = Field(
        default=2.0e-5,
        gt=0,
        le=1,
        description="Peak learning rate, reached at the end of warmup. Typical: 1e-5 to 5e-5 "
        "for full fine-tunes, 1e-4 to 3e-4 for LoRA.",
    )
    lr_scheduler: LrScheduler = Field(
        default="cosine",
        description="Learning rate after warmup: linear and cosine decay to 0 at the last "
        "step, constant stays at learningRate.",
    )
    warmup_steps: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000_000,
        description="Steps over which the learning rate rises linearly from 0 to learningRate. "
        "May not be set together with warmupRatio. Unset: see warmupRatio; neither: no warmup.",
    )
    warmup_ratio: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Warmup length as a fraction (0 to 1) of all steps, e.g. 0.03. May not be "
        "set together with warmupSteps. Unset: see warmupSteps; neither: no warmup.",
    )
    weight_decay: float = Field(
        default=0.0, ge=0, le=1, description="AdamW's decoupled weight decay coefficient."
    )
    micro_batch_size: int = Field(
        default=1,
        ge=1,
        le=4096,
        description="Sequences per GPU in one forward and backward pass. Raise it until GPU "
        "memory is nearly full.",
    )
    global_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=16_777_216,
        description="Sequences per optimizer step over all GPUs. Must be a multiple of "
        "microBatchSize x resources.nodes x resources.gpusPerNode (a node without GPUs counts "
        "as 1); the quotient is the number of gradient accumulation steps. Unset: exactly "
        "that product (no accumulation).",
    )
    max_seq_length: int = Field(
        default=2048,
        ge=16,
        le=1_048_576,
        description="Length of a training sequence, in tokens; longer records are truncated.",
    )
    packing: bool = Field(
        default=False,
        description="Concatenate records (separated by the end-of-sequence token) into "
        "sequences of exactly maxSeqLength tokens instead of padding each record: much faster "
        "on many short records.",
    )
    precision: Precision = Field(
        default="bf16",
        description="Number format of the forward and backward pass: bf16 (Ampere or newer "
        "GPUs), fp16 with loss scaling (older GPUs), fp32 (slow; CPU tests).",
    )
    gradient_clipping: float = Field(
        default=1.0,
        ge=0,
        le=1_000_000,
        description="Largest L2 norm of the gradients; larger ones are scaled down to it. "
        "0 turns clipping off.",
    )
    seed: int = Field(
        default=42,
        ge=0,
        le=4_294_967_295,
        description="Seed of every random generator (data order, dropout, adapter initialisation, "
        "evalSplit). The same seed and spec give the same data order after a resume.",
    )
    eval_every_steps: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Evaluate every this many steps, after the last one, and once before the "
        "first (the base model's loss, for comparison; not again after a resume). Needs "
        "dataset.eval or dataset.evalSplit. Unset: evaluate only after the last step (when "
        "there are evaluation records).",
    )
    log_every_steps: int = Field(
        default=10,
        ge=1,
        le=1_000_000,
        description="Report loss, learning rate and throughput (logs and status.progress) every "
        "this many steps.",
    )

    RULES = (
        Rule(
            field="epochs",
            cel="has(self.epochs) || has(self.maxSteps)",
            message="set exactly one of epochs and maxSteps",
            holds=lambda t: t.epochs is not None or t.max_steps is not None,
            reason="FieldValueRequired",
        ),
        Rule(
            field="maxSteps",
            cel="!(has(self.epochs) && has(self.maxSteps))",
            message="may not be set together with epochs: set exactly one of epochs and maxSteps",
            holds=lambda t: t.epochs is None or t.max_steps is None,
            reason="FieldValueForbidden",
        ),
        Rule(
            field="warmupRatio",
            cel="!(has(self.warmupSteps) && has(self.warmupRatio))",
            message="may not be set together with warmupSteps; use one of them",
            holds=lambda t: t.warmup_steps is None or t.warmup_ratio is None,
            reason="FieldValueForbidden",
        ),
        Rule(
            field="warmupSteps",
            cel="!has(self.warmupSteps) || !has(self.maxSteps) || self.warmupSteps < self.maxSteps",
            message="must be less than maxSteps",
            holds=lambda t: (
                t.warmup_steps is None or t.max_steps is None or t.warmup_steps < t.max_steps
            ),
        ),
    )

    def global_batch_size_for(self, world_size: int) -> int:
        """Sequences per optimizer step when `world_size` processes train."""
        return self.global_batch_size or self.micro_batch_size * world_size

    def gradient_accumulation_steps(self, world_size: int) -> int:
        """Micro-batches each process accumulates before an optimizer step."""
        return self.global_batch_size_for(world_size) // (self.micro_batch_size * world_size)

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the whole run, given the steps one epoch takes."""
        if self.max_steps is not None:
            return self.max_steps
        return (self.epochs or 1) * steps_per_epoch

    def warmup_steps_for(self, total_steps: int) -> int:
        """Warmup steps of a run of `total_steps` steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(total_steps * (self.warmup_ratio or 0.0))


class DeepSpeedSpec(ApiModel):
    """How DeepSpeed shards the training state over the GPUs."""

    zero_stage: int = Field(
        default=2,
        ge=0,
        le=3,
        description="ZeRO stage: 0 replicates everything, 1 shards optimizer state, 2 also "
        "gradients, 3 also the parameters (for models that do not fit one GPU).",
    )
    offload: Offload = Field(
        default="none",
        description="cpu: keep optimizer state (stage 2) and parameters (stage 3) in CPU memory "
        "to fit larger models, at lower speed; needs zeroStage 2 or 3. none: keep all on GPU.",
    )
    config: DeepSpeedConfig | None = Field(
        default=None,
        description="DeepSpeed configuration merged over the generated one, last (its keys "
        "win), for settings without a field here, e.g. optimizer.params.betas. Batch sizes come "
        "from spec.training and may not be set here. Unset: the generated configuration.",
    )

    RULES = (
        Rule(
            field="offload",
            cel="self.offload == 'none' || self.zeroStage >= 2",
            message="may be cpu only with zeroStage 2 or 3",
            holds=lambda d: d.offload == "none" or d.zero_stage >= 2,
        ),
        Rule(
            field="config",
            cel="!has(self.config) || !("
            + " || ".join(f"has(self.config.{k})" for k in DEEPSPEED_BATCH_KEYS)
            + ")",
            message="may not set "
            + ", ".join(DEEPSPEED_BATCH_KEYS)
            + ": they follow from spec.training.microBatchSize and globalBatchSize",
            holds=lambda d: (
                d.config is None or not any(k in d.config for k in DEEPSPEED_BATCH_KEYS)
            ),
            reason="FieldValueForbidden",
        ),
    )
