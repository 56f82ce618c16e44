"""The DeepSpeed config, derived from a few plain settings.

A pure function, so that what DeepSpeed receives can be read in a test table
rather than discovered in a pod log. The user's raw overrides are deep-merged
last: they can change anything, and nothing here silently undoes them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from kubetune_trainer.errors import ConfigError


def gradient_accumulation_steps(global_batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-steps per optimizer step so that global = micro * world * accumulation."""
    per_pass = micro_batch_size * world_size
    if global_batch_size % per_pass != 0:
        lower = max(per_pass, global_batch_size // per_pass * per_pass)
        raise ConfigError(
            f"training.global_batch_size={global_batch_size} is not a multiple of micro_batch_size "
            f"({micro_batch_size}) x world size ({world_size}) = {per_pass}; use e.g. {lower} "
            f"or {lower + per_pass}")
    return global_batch_size // per_pass


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in: nested mappings merge, everything else is replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def build_ds_config(
    *,
    zero_stage: int,
    offload: str,
    precision: str,
    micro_batch_size: int,
    global_batch_size: int,
    world_size: int,
    learning_rate: float,
    weight_decay: float,
    max_grad_norm: float,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config dict for deepspeed.initialize."""
    if offload != "none" and zero_stage < 1:
        raise ConfigError("deepspeed.offload=cpu needs deepspeed.zero_stage >= 1 (got 0)")
    zero: dict[str, Any] = {"stage": zero_stage}
    if offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_batch_size": global_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(
            global_batch_size, micro_batch_size, world_size),
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": weight_decay,
                # torch's AdamW needs no JIT-compiled op (DeepSpeed's FusedAdam builds one at
                # start-up); offload needs DeepSpeed's own CPU Adam.
                "torch_adam": offload == "none",
            },
        },
        # The trainer logs its own step lines on rank 0.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return deep_merge(config, overrides or {})
