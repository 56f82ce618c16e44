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
from typing import Any

from kubetune_api import FineTuneJobSpec

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

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.overhead

    def describe(self) -> str:
        """One line, e.g. '9.8 GiB per GPU: parameters 2.0 GiB, gradients 2.0 GiB, ...'."""
        parts = ", ".join(f"{name} {_gib(value)}" for name, value in self._parts().items())
        return f"{_gib(self.total)} per GPU: {parts}"

    def to_status(self) -> dict[str, int]:
        """The byte counts, for logs and the job's status."""
        return {**self._parts(), "total": self.total}

    def _parts(self) -> dict[str, int]:
        return {"parameters": self.parameters, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "overhead": self.overhead}


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def model_shape(model_dir: str, spec: FineTuneJobSpec, labels: list[str] | None = None) -> ModelShape:
    """The shape of the model in `model_dir` as the trainer builds it (modeling.load_model: the
    task's head for `labels`, spec.method.freeze, LoRA), counted on the meta device: only
    config.json is read, no weights."""
    import torch
    from transformers import AutoConfig

    from kubetune_trainer.errors import ConfigError
    from kubetune_trainer.modeling import _lora, count_parameters, freeze, model_class, transformer_blocks

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
        model: Any = model_class(spec.task).from_config(config, trust_remote_code=remote)
        attention = getattr(model.config, "_attn_implementation", None) or "eager"
        if spec.method.freeze is not None:
            freeze(model, spec.method.freeze)
        lora = spec.method.effective_lora
        if lora is not None:
            model = _lora(model, lora, spec.task)
    trainable, total = count_parameters(model)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or max(getattr(text, "hidden_sizes", None) or [0])
    if spec.task == "causal-lm":
        outputs = int(getattr(text, "vocab_size", 0) or 0)
    else:
        outputs = int(getattr(config, "num_labels", 0) or 0)
    return ModelShape(
        params=total, trainable=trainable, hidden_size=int(hidden),
        layers=int(getattr(text, "num_hidden_layers", 0) or len(transformer_blocks(model))),
        vocab_size=outputs, heads=int(getattr(text, "num_attention_heads", 0) or 0),
        stores_attention_scores=attention == "eager",
    )


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

    # Gradients, and the fp32 copy the optimizer step reads.
    if stage == 0:
        # param.grad, and the engine's flat copy for the all-reduce; mixed precision converts
        # them to fp32 for the master weights in the step.
        gradients = p * T + p * min(T, ALLREDUCE_BUCKET) + (FP32 * T if p < FP32 else 0)
    elif offload:
        # Reduced through the bucket straight into fp32 buffers in CPU memory.
        gradients = p * min(T, bucket) if stage < 3 else p * bucket
    else:
        # The contiguous reduce bucket (allocated whole), this rank's partition of the reduced
        # gradients, and the fp32 gradient partition the step reads; ZeRO 1 also keeps every
        # gradient in param.grad until the end of backward.
        gradients = p * bucket + p * shard(T) + FP32 * shard(T) + (p * T if stage == 1 else 0)

    # Adam: two fp32 moments per trainable parameter. Without ZeRO the fp32 master weights
    # exist only with mixed precision; ZeRO 1-3 always keep an fp32 copy of their partition.
    if offload:
        optimizer = 0
    elif stage == 0:
        optimizer = 2 * FP32 * T + (FP32 * T if p < FP32 else 0)
    else:
        optimizer = 3 * FP32 * shard(T)

    return MemoryEstimate(parameters=parameters, gradients=gradients, optimizer=optimizer,
                          activations=activation_bytes(shape, spec), overhead=GPU_OVERHEAD)


def activation_bytes(shape: ModelShape, spec: FineTuneJobSpec) -> int:
    """What one micro-batch's forward keeps for backward, at the start of backward."""
    training = spec.training
    b, s, h = training.micro_batch_size, training.max_seq_length, shape.hidden_size
    scale = PRECISION_BYTES[training.precision] / 2  # the formula counts 16-bit values
    per_layer = ACTIVATION_BYTES_PER_HIDDEN * s * b * h
    if shape.stores_attention_scores and shape.heads:
        per_layer += ATTENTION_SCORE_BYTES * shape.heads * s * s * b
    if spec.method.gradient_checkpointing:
        # Each block keeps only its input; backward recomputes one block at a time.
        layers = shape.layers * 2 * s * b * h + per_layer
    else:
        layers = shape.layers * per_layer
    positions = s if spec.task == "causal-lm" else 1  # classifiers have one output per sequence
    logits = LOSS_BYTES_PER_LOGIT * b * positions * shape.vocab_size
    return int(layers * scale) + logits


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
    try:
        number, suffix = Decimal(match["number"]), match["suffix"] or ""
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimal numbers
        raise ValueError(f"{text!r} is not a memory quantity; use e.g. 80Gi") from None
    if suffix in _BINARY:
        value = number * _BINARY[suffix]
    elif suffix in _DECIMAL:
        value = number * _DECIMAL[suffix]
    else:
        value = number.scaleb(int(suffix[1:]))
    return math.ceil(value)
