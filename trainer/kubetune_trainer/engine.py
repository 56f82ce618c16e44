"""Wrapping the model in a DeepSpeed engine: config, AdamW parameter groups, LR schedule.

The one place that calls `deepspeed.initialize`; everything it is given comes
from pure functions (`ds_config.build_ds_config`, `schedule.lr_at`) that are
tested on their own.
"""

from __future__ import annotations

from typing import Any

import torch

from kubetune_api import TrainingSpec
from kubetune_trainer.modeling import param_groups
from kubetune_trainer.schedule import LrSchedule, build_lr_scheduler


def lr_schedule(training: TrainingSpec, total_steps: int) -> LrSchedule:
    """The learning-rate schedule of spec.training for a run of `total_steps` steps."""
    return LrSchedule(kind=training.lr_scheduler, peak_lr=training.learning_rate,
                      warmup_steps=training.warmup_steps_for(total_steps), total_steps=total_steps)


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
