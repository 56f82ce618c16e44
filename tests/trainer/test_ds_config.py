"""The DeepSpeed config derived from the FineTuneJob spec."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_api import SpecError, parse_spec
from kubetune_trainer.ds_config import build_ds_config, deep_merge


def ds(zero_stage: int = 2, offload: str = "none", precision: str = "bf16", micro_batch_size: int = 4,
       global_batch_size: int = 64, world_size: int = 8, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """build_ds_config of a spec with these settings (`world_size` GPUs on one node), lr 2e-4,
    weight decay 0.1, gradient clipping 1.0."""
    deepspeed: dict[str, Any] = {"zeroStage": zero_stage, "offload": offload}
    if overrides:
        deepspeed["config"] = overrides
    return build_ds_config(parse_spec({
        "model": {"uri": "s3://models/m/"}, "dataset": {"train": "s3://data/t.jsonl", "format": "text"},
        "training": {"maxSteps": 10, "precision": precision, "microBatchSize": micro_batch_size,
                     "globalBatchSize": global_batch_size, "learningRate": 2e-4, "weightDecay": 0.1,
                     "gradientClipping": 1.0},
        "deepspeed": deepspeed, "resources": {"nodes": 1, "gpusPerNode": world_size},
        "output": {"uri": "s3://models/out/"}}))


@pytest.mark.parametrize(("global_batch", "micro", "world", "accum"), [
    (64, 4, 8, 2), (16, 4, 4, 1), (6, 1, 2, 3), (128, 2, 16, 4),
])
def test_gradient_accumulation_is_global_over_micro_times_world(global_batch: int, micro: int, world: int,
                                                                 accum: int) -> None:
    config = ds(micro_batch_size=micro, global_batch_size=global_batch, world_size=world)
    assert config["gradient_accumulation_steps"] == accum
    assert config["train_batch_size"] == global_batch


def test_indivisible_global_batch_names_the_field_and_suggests_values() -> None:
    with pytest.raises(SpecError, match=r"spec.training.globalBatchSize must be a multiple of microBatchSize x "
                                        r"resources.nodes x resources.gpusPerNode = 32 \(got 60\); "
                                        r"use e.g. 32 or 64"):
        ds(global_batch_size=60, micro_batch_size=4, world_size=8)


def test_generated_config() -> None:
    config = ds()
    assert config["train_batch_size"] == 64
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 1.0
    assert config["zero_optimization"] == {"stage": 2}
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["optimizer"]["type"] == "AdamW"
    assert config["optimizer"]["params"]["lr"] == 2e-4
    assert config["optimizer"]["params"]["weight_decay"] == 0.1


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_precision_switches(precision: str) -> None:
    config = ds(precision=precision)
    assert config["bf16"]["enabled"] is (precision == "bf16")
    assert config["fp16"]["enabled"] is (precision == "fp16")


def test_cpu_offload_moves_optimizer_state_and_at_stage_3_the_weights() -> None:
    stage2 = ds(zero_stage=2, offload="cpu")["zero_optimization"]
    assert stage2["offload_optimizer"]["device"] == "cpu" and "offload_param" not in stage2
    stage3 = ds(zero_stage=3, offload="cpu")["zero_optimization"]
    assert stage3["offload_param"]["device"] == "cpu"
    assert ds(offload="cpu")["optimizer"]["params"]["torch_adam"] is False  # needs DeepSpeed's CPU Adam
    with pytest.raises(SpecError, match=r"spec.deepspeed.offload may be cpu only with zeroStage 2 or 3"):
        ds(zero_stage=1, offload="cpu")


def test_raw_overrides_are_deep_merged_last() -> None:
    config = ds(zero_stage=3, overrides={
        "zero_optimization": {"stage3_max_live_parameters": 10**8},
        "optimizer": {"params": {"betas": [0.9, 0.95]}},
        "gradient_clipping": 0.5,
    })
    assert config["zero_optimization"] == {"stage": 3, "stage3_max_live_parameters": 10**8}
    assert config["optimizer"]["params"]["betas"] == [0.9, 0.95]
    assert config["optimizer"]["params"]["lr"] == 2e-4  # siblings survive
    assert config["gradient_clipping"] == 0.5


def test_deep_merge_does_not_mutate_its_inputs() -> None:
    base = {"a": {"b": 1}}
    merged = deep_merge(base, {"a": {"c": 2}})
    assert merged == {"a": {"b": 1, "c": 2}} and base == {"a": {"b": 1}}


def test_deepspeeds_cpu_shm_op_is_not_compiled_at_start() -> None:
    """On CPU the trainer skips a JIT build that cost a minute of every pod start (and is unused in training)."""
    import importlib

    from kubetune_trainer.distributed import _skip_shm_comm_op

    _skip_shm_comm_op()
    assert importlib.import_module("deepspeed.comm.torch").build_shm_op() is None
