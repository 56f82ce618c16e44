"""Wrapping the model in a DeepSpeed engine: config, AdamW parameter groups, LR schedule.

The one place that calls `deepspeed.initialize`; everything it is given comes
from pure functions (`build_ds_config`, `lr_at`) that are tested on their own.
"""

from __future__ import annotations

from typing import Any

import torch

from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.ds_config import build_ds_config
from kubetune_trainer.modeling import param_groups
from kubetune_trainer.schedule import LrSchedule, build_lr_scheduler


def lr_schedule(training: TrainingConfig, total_steps: int) -> LrSchedule:
    return LrSchedule(kind=training.lr_scheduler, peak_lr=training.learning_rate,
                      warmup_steps=training.warmup_steps_for(total_steps), total_steps=total_steps,
                      min_lr=training.min_learning_rate)


def create_engine(model: torch.nn.Module, ds_config: dict[str, Any], schedule: LrSchedule,
                  weight_decay: float) -> Any:
    """deepspeed.initialize with AdamW groups from the model and a LambdaLR following `schedule`."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, weight_decay),
        config=ds_config,
        # DeepSpeed steps the scheduler at each optimizer step and saves it in checkpoints.
        lr_scheduler=lambda optimizer: build_lr_scheduler(optimizer, schedule),
    )
    return engine


def ds_config_for(training: TrainingConfig, *, zero_stage: int, offload: str,
                  overrides: dict[str, Any], world_size: int) -> dict[str, Any]:
    """build_ds_config from the trainer's config; the global batch defaults to one micro-batch per rank."""
    global_batch = training.global_batch_size or training.micro_batch_size * world_size
    return build_ds_config(
        zero_stage=zero_stage, offload=offload, precision=training.precision,
        micro_batch_size=training.micro_batch_size, global_batch_size=global_batch,
        world_size=world_size, learning_rate=training.learning_rate,
        weight_decay=training.weight_decay, max_grad_norm=training.max_grad_norm,
        overrides=overrides,
    )
