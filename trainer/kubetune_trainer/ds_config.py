"""The DeepSpeed config, derived from the FineTuneJob spec.

A pure function, so that what DeepSpeed receives can be read in a test table
rather than discovered in a pod log. The batch arithmetic (global batch,
gradient accumulation) is kubetune_api's, the one the operator and the CRD's
rules use too. The user's raw overrides (spec.deepspeed.config) are
deep-merged last: they can change anything but the batch keys (the spec
forbids those), and nothing here silently undoes them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from kubetune_api import FineTuneJobSpec


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in: nested mappings merge, everything else is replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def build_ds_config(spec: FineTuneJobSpec) -> dict[str, Any]:
    """The DeepSpeed config dict for deepspeed.initialize, for the spec's world of processes."""
    training, deepspeed, world = spec.training, spec.deepspeed, spec.world_size
    zero: dict[str, Any] = {"stage": deepspeed.zero_stage}
    if deepspeed.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if deepspeed.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_batch_size": training.global_batch_size_for(world),
        "train_micro_batch_size_per_gpu": training.micro_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps(world),
        "gradient_clipping": training.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": training.precision == "bf16"},
        "fp16": {"enabled": training.precision == "fp16"},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": training.learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": training.weight_decay,
                # torch's AdamW needs no JIT-compiled op (DeepSpeed's FusedAdam builds one at
                # start-up); offload needs DeepSpeed's own CPU Adam.
                "torch_adam": deepspeed.offload == "none",
            },
        },
        # The trainer logs its own step lines on rank 0.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return deep_merge(config, deepspeed.config or {})
