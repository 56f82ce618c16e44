"""How much memory one training process needs on its GPU, before any GPU is requested.

The preflight compares this estimate with the GPUs' memory, so that a job that
cannot fit fails in a minute with the numbers rather than with an out-of-memory
error after its pods were scheduled. The parameter counts come from the model
built on the meta device (no weights read, no memory used) with the trainer's
own head, freezing and LoRA; the rest is arithmetic over the spec and the
DeepSpeed config the trainer will use (ds_config.py), following what DeepSpeed
allocates at each ZeRO stage.

Notation below: P all parameters, T trainable ones, N processes (world size),
p bytes of a value in the training precision (2 for bf16/fp16, 4 for fp32),
B the reduce bucket (zero_optimization.reduce_bucket_size, 5e8 elements unless
spec.deepspeed.config sets it). hack/bench_memory.py checks the estimate against
the measured peak of real DeepSpeed runs, ZeRO 0 to 3.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from kubetune_api import FineTuneJobSpec

if TYPE_CHECKING:
    import torch

GIB = 2**30
FP32 = 4
# What the CUDA context and kernels (~0.5 GiB), NCCL's communicator buffers and the cuBLAS
# workspaces take on each GPU besides tensors: a fixed allowance, not a measurement.
GPU_OVERHEAD = GIB
# Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"),
# eq. 1: a transformer block without recomputation keeps s*b*h*(34 + 5*a*s/h) bytes at 16 bits.
# 5*a*s/h is the softmax's input, output and dropout mask (a x s x s per sequence).
ACTIVATION_BYTES_PER_HIDDEN = 34
ATTENTION_SCORE_BYTES = 5
# Cross-entropy on a causal LM's logits keeps fp32 log-probabilities (transformers upcasts the
# logits), and the backward pass starts with two more fp32 tensors of that size (the gradients
# of the log-probabilities and of the logits): 3 x 4 bytes per logit at the peak.
LOSS_BYTES_PER_LOGIT = 3 * FP32
# DeepSpeed's defaults where spec.deepspeed.config does not set them (deepspeed.runtime.zero.config).
DEFAULT_REDUCE_BUCKET = 500_000_000
DEFAULT_PREFETCH_BUCKET = 50_000_000
DEFAULT_MAX_REUSE_DISTANCE = 1_000_000_000
# Without ZeRO, the engine all-reduces the gradients through flat copies of this many elements
# (deepspeed.runtime.constants.MEMORY_OPT_ALLREDUCE_SIZE).
ALLREDUCE_BUCKET = 500_000_000
PRECISION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know of a model, as the trainer builds it."""

    params: int
    """All parameters of the model as the trainer builds it (task head, LoRA adapters included)."""
    trainable: int
    """Parameters that require grad."""
    hidden_size: int
    """Width of the hidden states."""
    layers: int
    """Transformer blocks."""
    vocab_size: int
    """Outputs per position of the head: the vocabulary of a causal LM, the classes of a classifier."""
    heads: int
    """Attention heads (0 if unknown)."""
    stores_attention_scores: bool = False
    """Whether backward keeps the a x s x s softmax of every block (transformers' eager attention);
    SDPA and flash attention, transformers' default, keep only their output."""
    lora_input_width: int = 0
    """Summed input features of the linear layers of one block that carry LoRA adapters."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training process needs on its GPU, by what holds them."""

    parameters: int
    """The weights in the training precision (at ZeRO 3: this rank's partition and the gathered ones)."""
    gradients: int
    """Gradients, DeepSpeed's reduce buckets and the fp32 gradients the optimizer step reads."""
    optimizer: int
    """Adam's two fp32 moments and the fp32 master weights, on this rank."""
    activations: int
    """What the forward pass keeps for backward, and the loss over the logits."""
    overhead: int
    """CUDA context, NCCL and cuBLAS workspaces: a fixed allowance (GPU_OVERHEAD)."""
    reused: int = 0
    """Counted in both gradients and activations: the gradient buffers that exist only after
    backward (see estimate_memory) take memory the activations have freed."""

    @property
    def total(self) -> int:
        """The peak: the parts' sum, less what they reuse of each other."""
        return self.parameters + self.gradients + self.optimizer + self.activations + self.overhead - self.reused

    def describe(self) -> str:
        """One line, e.g. '9.8 GiB per GPU: parameters 2.0 GiB, gradients 2.0 GiB, ...'."""
        parts = ", ".join(f"{name} {gib(value)}" for name, value in self._parts().items())
        reused = f"; gradients reuse {gib(self.reused)} of the activations' memory" if self.reused else ""
        return f"{gib(self.total)} per GPU: {parts}{reused}"

    def to_status(self) -> dict[str, int]:
        """The byte counts, for logs and the job's status."""
        return {**self._parts(), "reused": self.reused, "total": self.total}

    def _parts(self) -> dict[str, int]:
        return {"parameters": self.parameters, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "overhead": self.overhead}


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def model_shape(model_dir: str, spec: FineTuneJobSpec, labels: list[str] | None = None) -> ModelShape:
    """The shape of the model in `model_dir` as the trainer builds it (modeling.load_model: the
    task's head for `labels`, spec.method.freeze, LoRA), counted on the meta device: only
    config.json is read, no weights."""
    import torch
    from transformers import AutoConfig

    from kubetune_trainer.errors import ConfigError
    from kubetune_trainer.modeling import (
        _lora,
        count_parameters,
        freeze,
        model_class,
        transformer_blocks,
    )

    remote = spec.model.trust_remote_code
    kwargs: dict[str, Any] = {}
    if labels is not None:  # as load_model passes them to from_pretrained
        kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                  "label2id": {name: i for i, name in enumerate(labels)}}
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=remote, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"the model in {model_dir}: cannot read its config.json "
                          f"({str(e).splitlines()[0]})") from None
    with torch.device("meta"):
        try:
            model: Any = model_class(spec.task).from_config(config, trust_remote_code=remote)
        except ValueError as e:  # transformers: no model of this task for the config's class
            raise ConfigError(f"spec.task {spec.task}: the model in {model_dir} has no {spec.task} head in "
                              f"transformers ({str(e).splitlines()[0][:200]})") from None
        attention = getattr(model.config, "_attn_implementation", None) or "eager"
        if spec.method.freeze is not None:
            freeze(model, spec.method.freeze)
        lora = spec.method.effective_lora
        if lora is not None:
            model = _lora(model, lora, spec.task)
    trainable, total = count_parameters(model)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(getattr(text, "num_hidden_layers", 0) or len(transformer_blocks(model)))
    # Vision models without a hidden_size (ResNet) list the widths of their stages.
    hidden = getattr(text, "hidden_size", None) or max(getattr(text, "hidden_sizes", None) or [0])
    outputs = getattr(text, "vocab_size", None) if spec.task == "causal-lm" else getattr(config, "num_labels", None)
    return ModelShape(
        params=total, trainable=trainable, hidden_size=int(hidden), layers=layers, vocab_size=int(outputs or 0),
        heads=int(getattr(text, "num_attention_heads", None) or 0), stores_attention_scores=attention == "eager",
        lora_input_width=_lora_inputs(model) // max(layers, 1) if lora is not None else 0,
    )


def _lora_inputs(model: torch.nn.Module) -> int:
    """Summed input features of the model's linear layers that carry LoRA adapters."""
    import torch
    from peft.tuners.lora import LoraLayer

    bases = [m.get_base_layer() for m in model.modules() if isinstance(m, LoraLayer)]
    return sum(base.in_features for base in bases if isinstance(base, torch.nn.Linear))


def estimate_memory(shape: ModelShape, spec: FineTuneJobSpec) -> MemoryEstimate:
    """The memory one training process needs on its GPU for `spec` (ZeRO stage, offload,
    precision, micro-batch, sequence length, gradient checkpointing, world size)."""
    from kubetune_trainer.ds_config import build_ds_config

    zero: dict[str, Any] = build_ds_config(spec)["zero_optimization"]
    stage, offload = int(zero.get("stage", 0)), spec.deepspeed.offload == "cpu"
    p = PRECISION_BYTES[spec.training.precision]
    n = max(spec.world_size, 1)
    P, T = shape.params, shape.trainable
    bucket = int(zero.get("reduce_bucket_size", DEFAULT_REDUCE_BUCKET))
    if zero.get("overlap_comm", stage == 3) and stage in (1, 2):
        bucket *= 2  # ZeRO 1/2 double-buffer the bucket to overlap reduction with backward

    def shard(elements: int) -> int:
        return math.ceil(elements / n)

    # Parameters. ZeRO 3 keeps its 1/N partition (none with offload: it lives in CPU memory)
    # plus the weights it gathered: after the first step it keeps every weight whose next use
    # in the step's order (forward, then backward) is within stage3_max_reuse_distance
    # elements, i.e. the last max_reuse_distance / 2 of them, and prefetches a bucket ahead.
    if stage < 3:
        parameters = p * P
    else:
        reuse = int(zero.get("stage3_max_reuse_distance", DEFAULT_MAX_REUSE_DISTANCE))
        prefetch = int(zero.get("stage3_prefetch_bucket_size", DEFAULT_PREFETCH_BUCKET))
        gathered = min(P, reuse // 2 + prefetch)
        parameters = p * gathered + (0 if offload else p * shard(P))

    # Gradients: `kept` are allocated as backward starts, beside the activations; `late` exist
    # only from the end of backward through the optimizer step, in memory the activations have
    # freed by then (the estimate's `reused`).
    if offload:
        # Reduced through the bucket (allocated whole) straight into fp32 buffers in CPU memory;
        # ZeRO 1/2 stage them through a buffer of the largest parameter's size (a causal LM's
        # token embeddings, vocab x hidden).
        largest = min(T, shape.vocab_size * shape.hidden_size) if stage < 3 and spec.task == "causal-lm" else 0
        kept, late = p * bucket + p * largest, 0
    elif stage == 0:
        # param.grad, the engine's flat copy of them for the all-reduce, and with mixed
        # precision their fp32 copy for the master weights.
        kept, late = 0, p * T + p * min(T, ALLREDUCE_BUCKET) + (FP32 * T if p < FP32 else 0)
    else:
        # The contiguous reduce bucket (allocated whole) and this rank's partition of the reduced
        # gradients; the step's fp32 copy of that partition; ZeRO 1 also keeps every gradient in
        # param.grad until the end of backward.
        kept = p * bucket + p * shard(T)
        late = FP32 * shard(T) + (p * T if stage == 1 else 0)

    # Adam: two fp32 moments per trainable parameter. Without ZeRO the fp32 master weights
    # exist only with mixed precision; ZeRO 1-3 always keep an fp32 copy of their partition.
    if offload:
        optimizer = 0
    elif stage == 0:
        optimizer = 2 * FP32 * T + (FP32 * T if p < FP32 else 0)
    else:
        optimizer = 3 * FP32 * shard(T)

    activations = activation_bytes(shape, spec)
    return MemoryEstimate(parameters=parameters, gradients=kept + late, optimizer=optimizer,
                          activations=activations, overhead=GPU_OVERHEAD, reused=min(late, activations))


def activation_bytes(shape: ModelShape, spec: FineTuneJobSpec) -> int:
    """What one micro-batch's forward keeps for backward, at the start of backward."""
    training = spec.training
    b, s, h, p = training.micro_batch_size, training.max_seq_length, shape.hidden_size, \
        PRECISION_BYTES[training.precision]
    # Korthikanti's formula counts 16-bit values: p / 2 scales it to the training precision.
    block = ACTIVATION_BYTES_PER_HIDDEN * s * b * h * p // 2
    if shape.stores_attention_scores:
        block += ATTENTION_SCORE_BYTES * shape.heads * s * s * b * p // 2
    lora = spec.method.effective_lora
    if lora is not None and lora.dropout > 0:
        # LoRA's A matrices keep their input after dropout, and dropout its 1-byte mask.
        block += (p + 1) * s * b * shape.lora_input_width
    if spec.method.gradient_checkpointing:
        # Each block keeps only its input; backward recomputes one block at a time.
        blocks = shape.layers * s * b * h * p + block
    else:
        blocks = shape.layers * block
    positions = s if spec.task == "causal-lm" else 1  # a classifier's head sees one position
    return blocks + LOSS_BYTES_PER_LOGIT * b * positions * shape.vocab_size


# A Kubernetes quantity: a number and an optional binary, decimal or exponent suffix.
_QUANTITY = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
                       r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
            "P": Decimal(10**15), "E": Decimal(10**18)}


def parse_memory_quantity(text: str) -> int:
    """A Kubernetes memory quantity ("80Gi", "81920Mi", "80G", "1.5Ti", "1e9", plain bytes) in
    bytes, fractions of a byte rounded up as Kubernetes does."""
    match = _QUANTITY.fullmatch(str(text).strip())
    if match is None:
        raise ValueError(f"{text!r} is not a memory quantity; use e.g. 80Gi, 81920Mi or 80G")
    number, suffix = Decimal(match["number"]), match["suffix"] or ""
    try:
        if suffix in _BINARY:
            value = number * _BINARY[suffix]
        elif suffix in _DECIMAL:
            value = number * _DECIMAL[suffix]
        else:
            value = number.scaleb(int(suffix[1:]))
        return math.ceil(value)
    except (OverflowError, InvalidOperation):  # an exponent beyond Decimal's range
        raise ValueError(f"{text!r} is not a memory quantity: its exponent is out of range") from None
