"""The per-GPU memory estimate the preflight checks against the GPUs' memory."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from kubetune_api import FineTuneJobSpec, parse_spec
from kubetune_trainer.memory import (
    GIB,
    GPU_OVERHEAD,
    MemoryEstimate,
    ModelShape,
    estimate_memory,
    model_shape,
    parse_memory_quantity,
)

# A Llama-2-7B-like model (32 blocks, hidden 4096, vocabulary 32,000), fully trainable.
LLAMA_7B = ModelShape(params=6_738_415_616, trainable=6_738_415_616, hidden_size=4096, layers=32,
                      vocab_size=32_000, heads=32)
# A model of exactly 1e9 parameters, for figures one can work out by hand.
BILLION = ModelShape(params=10**9, trainable=10**9, hidden_size=2048, layers=16, vocab_size=32_000, heads=16)


def spec(zero_stage: int = 2, offload: str = "none", precision: str = "bf16", gpus: int = 8, nodes: int = 1,
         method: str = "full", checkpointing: bool = True, micro_batch_size: int = 1, seq: int = 2048,
         deepspeed_config: dict[str, Any] | None = None) -> FineTuneJobSpec:
    deepspeed: dict[str, Any] = {"zeroStage": zero_stage, "offload": offload}
    if deepspeed_config:
        deepspeed["config"] = deepspeed_config
    return parse_spec({
        "model": {"uri": "s3://models/m/"}, "dataset": {"train": "s3://data/t.jsonl", "format": "text"},
        "training": {"maxSteps": 10, "precision": precision, "microBatchSize": micro_batch_size,
                     "maxSeqLength": seq},
        "method": {"type": method, "gradientCheckpointing": checkpointing},
        "deepspeed": deepspeed, "resources": {"nodes": nodes, "gpusPerNode": gpus},
        "output": {"uri": "s3://models/out/"}})


# --- what ZeRO, LoRA, checkpointing and offload save


def test_each_zero_stage_needs_less_per_gpu_than_the_one_before() -> None:
    totals = [estimate_memory(LLAMA_7B, spec(zero_stage=stage, gpus=8)).total for stage in (0, 1, 2, 3)]
    assert totals[3] < totals[2] < totals[1] < totals[0]
    # Without ZeRO every GPU holds 16 bytes a parameter and more (weights and gradients 2 each,
    # Adam's moments and the master weights 12): a 7B full fine-tune does not fit 80 GiB.
    assert totals[1] < 80 * GIB < totals[0]


def test_zero_shards_only_over_more_than_one_process() -> None:
    one, eight = (estimate_memory(LLAMA_7B, spec(zero_stage=3, gpus=gpus)) for gpus in (1, 8))
    assert eight.optimizer * 8 == pytest.approx(one.optimizer, rel=1e-6)
    assert eight.total < one.total
    # Two nodes of 8 GPUs shard over 16 processes.
    sixteen = estimate_memory(LLAMA_7B, spec(zero_stage=3, gpus=8, nodes=2))
    assert sixteen.optimizer * 2 == pytest.approx(eight.optimizer, rel=1e-6)


def test_lora_needs_far_less_than_full_fine_tuning() -> None:
    lora_shape = ModelShape(params=LLAMA_7B.params + 40_000_000, trainable=40_000_000, hidden_size=4096,
                            layers=32, vocab_size=32_000, heads=32, lora_input_width=6 * 4096 + 11008)
    full = estimate_memory(LLAMA_7B, spec(zero_stage=2, method="full", gpus=1))
    lora = estimate_memory(lora_shape, spec(zero_stage=2, method="lora", gpus=1))
    assert lora.total < full.total / 4
    assert lora.total < 24 * GIB < 80 * GIB < full.total  # a 7B LoRA fits one 24 GiB GPU
    assert lora.optimizer < full.optimizer / 100
    assert lora.parameters == pytest.approx(full.parameters, rel=0.01)  # the frozen base is still there


def test_gradient_checkpointing_lowers_activations() -> None:
    with_checkpointing = estimate_memory(LLAMA_7B, spec(checkpointing=True, micro_batch_size=4))
    without = estimate_memory(LLAMA_7B, spec(checkpointing=False, micro_batch_size=4))
    assert with_checkpointing.activations < without.activations / 3
    assert (with_checkpointing.parameters, with_checkpointing.gradients, with_checkpointing.optimizer) == \
        (without.parameters, without.gradients, without.optimizer)


def test_activations_grow_with_micro_batch_and_sequence_length() -> None:
    base = estimate_memory(LLAMA_7B, spec(checkpointing=False)).activations
    assert estimate_memory(LLAMA_7B, spec(checkpointing=False, micro_batch_size=2)).activations == 2 * base
    assert estimate_memory(LLAMA_7B, spec(checkpointing=False, seq=4096)).activations == 2 * base


def test_eager_attention_adds_the_score_matrices() -> None:
    eager = dataclasses.replace(LLAMA_7B, stores_attention_scores=True)
    fused = estimate_memory(LLAMA_7B, spec(checkpointing=False)).activations
    # 5 bytes per score, a x s x s per sequence and block, at 16 bits.
    assert estimate_memory(eager, spec(checkpointing=False)).activations - fused == 5 * 32 * 2048 * 2048 * 32


def test_cpu_offload_moves_the_optimizer_and_at_stage_3_the_weights_off_the_gpu() -> None:
    stage2, stage2_offload = (estimate_memory(LLAMA_7B, spec(zero_stage=2, offload=o)) for o in ("none", "cpu"))
    assert stage2_offload.optimizer == 0 < stage2.optimizer
    assert stage2_offload.parameters == stage2.parameters
    assert stage2_offload.total < stage2.total
    stage3, stage3_offload = (estimate_memory(LLAMA_7B, spec(zero_stage=3, offload=o)) for o in ("none", "cpu"))
    assert stage3_offload.optimizer == 0
    # Only the gathered weights stay: this rank's 1/8 partition lives in CPU memory.
    assert stage3.parameters - stage3_offload.parameters == 2 * -(-LLAMA_7B.params // 8)


# --- figures worked out by hand


def test_one_billion_parameters_fp32_without_zero() -> None:
    estimate = estimate_memory(BILLION, spec(zero_stage=0, precision="fp32", gpus=1))
    assert estimate.parameters == 4 * 10**9
    # param.grad, and the engine's flat all-reduce copy of (at most) 5e8 of them.
    assert estimate.gradients == 4 * 10**9 + 4 * 5 * 10**8
    assert estimate.optimizer == 8 * 10**9  # Adam's two fp32 moments; fp32 weights are their own master


def test_one_billion_parameters_bf16_without_zero() -> None:
    estimate = estimate_memory(BILLION, spec(zero_stage=0, precision="bf16", gpus=1))
    assert estimate.parameters == 2 * 10**9
    # bf16 param.grad, the flat all-reduce copy, the fp32 gradients of the master weights.
    assert estimate.gradients == 2 * 10**9 + 2 * 5 * 10**8 + 4 * 10**9
    assert estimate.optimizer == 12 * 10**9  # fp32 master weights and two fp32 moments


def test_one_billion_parameters_bf16_zero_2_on_8_gpus() -> None:
    estimate = estimate_memory(BILLION, spec(zero_stage=2, precision="bf16", gpus=8))
    shard = 10**9 // 8
    assert estimate.parameters == 2 * 10**9
    # The 5e8-element reduce bucket, this rank's bf16 gradient partition, its fp32 copy for the step.
    assert estimate.gradients == 2 * 5 * 10**8 + 2 * shard + 4 * shard
    assert estimate.optimizer == 12 * shard


def test_one_billion_parameters_bf16_zero_3_on_8_gpus() -> None:
    estimate = estimate_memory(BILLION, spec(zero_stage=3, precision="bf16", gpus=8))
    shard = 10**9 // 8
    # This rank's partition, and the weights kept gathered: max_reuse_distance / 2 plus a prefetch bucket.
    assert estimate.parameters == 2 * shard + 2 * (5 * 10**8 + 5 * 10**7)
    assert estimate.gradients == 2 * 5 * 10**8 + 2 * shard + 4 * shard
    assert estimate.optimizer == 12 * shard


def test_deepspeed_config_overrides_are_taken_into_account() -> None:
    default = estimate_memory(BILLION, spec(zero_stage=2))
    small_bucket = estimate_memory(BILLION, spec(zero_stage=2, deepspeed_config={
        "zero_optimization": {"reduce_bucket_size": 10**8}}))
    assert default.gradients - small_bucket.gradients == 2 * (5 * 10**8 - 10**8)


def test_describe_and_status() -> None:
    estimate = MemoryEstimate(parameters=2 * GIB, gradients=2 * GIB, optimizer=4 * GIB,
                              activations=GIB + GIB // 4, overhead=GIB // 2)
    assert estimate.total == 9 * GIB + GIB * 3 // 4
    assert estimate.describe() == ("9.8 GiB per GPU: parameters 2.0 GiB, gradients 2.0 GiB, optimizer 4.0 GiB, "
                                   "activations 1.2 GiB, overhead 0.5 GiB")
    status = estimate.to_status()
    assert status == {"parameters": 2 * GIB, "gradients": 2 * GIB, "optimizer": 4 * GIB,
                      "activations": GIB + GIB // 4, "overhead": GIB // 2, "reused": 0, "total": estimate.total}
    assert estimate_memory(BILLION, spec()).overhead == GPU_OVERHEAD


def test_the_steps_gradient_buffers_reuse_the_activations_memory() -> None:
    """Without ZeRO, param.grad, its flat all-reduce copy and the fp32 gradients appear only as
    backward frees the activations: the peak is the larger of the two, not their sum."""
    estimate = estimate_memory(BILLION, spec(zero_stage=0, gpus=1))
    assert 0 < estimate.activations < estimate.gradients
    assert estimate.reused == estimate.activations
    assert estimate.total == estimate.parameters + estimate.optimizer + estimate.gradients + estimate.overhead
    assert estimate.describe().endswith(f"; gradients reuse {estimate.activations / GIB:.1f} GiB of the "
                                        "activations' memory")
    # ZeRO 2 keeps its reduce bucket and gradient partition from step to step: only the step's
    # fp32 copy of the partition reuses activation memory.
    zero2 = estimate_memory(BILLION, spec(zero_stage=2, gpus=8))
    assert zero2.reused == 4 * 10**9 // 8


# --- model_shape: the parameters of the model the trainer builds, without its weights


@pytest.mark.parametrize(("task", "method", "labels"), [
    ("causal-lm", {"type": "full"}, None),
    ("causal-lm", {"type": "lora"}, None),
    ("causal-lm", {"type": "lora", "lora": {"r": 4, "targetModules": ["q_proj", "v_proj"]}}, None),
    ("causal-lm", {"type": "full", "freeze": {"embeddings": True, "bottomLayers": 1}}, None),
    ("sequence-classification", {"type": "full"}, ["negative", "neutral", "positive"]),
    ("sequence-classification", {"type": "lora"}, ["negative", "positive"]),
])
def test_model_shape_counts_what_load_model_builds(tiny_model_dir: Path, task: str, method: dict[str, Any],
                                                   labels: list[str] | None) -> None:
    from kubetune_trainer.modeling import count_parameters, load_model

    job = parse_spec({
        "task": task, "model": {"uri": "s3://models/m/"},
        "dataset": {"train": "s3://data/t.jsonl", "format": "text" if task == "causal-lm" else "classification"},
        "training": {"maxSteps": 10, "precision": "fp32"}, "method": method, "output": {"uri": "s3://models/out/"}})
    shape = model_shape(str(tiny_model_dir), job, labels)
    trainable, total = count_parameters(load_model(str(tiny_model_dir), job, labels))
    assert (shape.trainable, shape.params) == (trainable, total)
    assert (shape.hidden_size, shape.layers, shape.heads) == (64, 2, 4)
    assert shape.vocab_size == (49152 if task == "causal-lm" else len(labels or ()))
    assert not shape.stores_attention_scores  # SDPA
    assert (shape.lora_input_width > 0) == (method["type"] == "lora")


def test_model_shape_reads_no_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    assert model_shape(str(tmp_path), spec()).params == 3_219_776


def test_model_shape_without_a_config_names_the_folder(tmp_path: Path) -> None:
    from kubetune_trainer.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"the model in {tmp_path}: cannot read its config.json"):
        model_shape(str(tmp_path), spec())


# --- parse_memory_quantity


@pytest.mark.parametrize(("text", "expected"), [
    ("80Gi", 80 * 2**30),
    ("81920Mi", 80 * 2**30),
    ("80G", 80 * 10**9),
    ("1.5Ti", 3 * 2**39),
    ("141Gi", 141 * 2**30),
    ("96000M", 96 * 10**9),
    ("512Ki", 2**19),
    ("85899345920", 80 * 2**30),
    ("1e9", 10**9),
    ("8E3", 8000),
    (" 16Gi ", 16 * 2**30),
    ("1500m", 2),  # fractions of a byte round up, as Kubernetes does
    (".5Gi", 2**29),
])
def test_parse_memory_quantity(text: str, expected: int) -> None:
    assert parse_memory_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "Gi", "80 GB", "80GB", "80gi", "-1Gi", "eighty", "1.2.3", "80Gi!"])
def test_parse_memory_quantity_names_a_bad_quantity(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{text!r} is not a memory quantity; use e.g. 80Gi")):
        parse_memory_quantity(text)


def test_parse_memory_quantity_refuses_an_exponent_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"'1e999999999' is not a memory quantity: its exponent is out of range"):
        parse_memory_quantity("1e999999999")
