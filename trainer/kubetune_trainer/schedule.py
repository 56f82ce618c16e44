"""The learning-rate schedule: a pure function of the step, wrapped as a torch scheduler.

`lr_at` is what a reader checks against a table; `build_lr_scheduler` wraps it
in a LambdaLR so that DeepSpeed steps it and saves its position in checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

from kubetune_api.spec import LrScheduler


@dataclass(frozen=True)
class LrSchedule:
    """Linear warmup to peak_lr, then linear/cosine decay to min_lr at total_steps, or constant."""

    kind: LrScheduler
    """Shape after warmup."""
    peak_lr: float
    """Learning rate at the end of warmup."""
    warmup_steps: int
    """Steps of linear warmup."""
    total_steps: int
    """Step at which the decay reaches min_lr."""
    min_lr: float = 0.0
    """Floor of the decay."""


def lr_at(step: int, schedule: LrSchedule) -> float:
    """Learning rate for zero-based optimizer step `step`."""
    s = schedule
    if step < s.warmup_steps:
        # (step + 1) so that the very first step already learns something.
        return s.peak_lr * (step + 1) / (s.warmup_steps + 1)
    if s.kind == "constant":
        return s.peak_lr
    decay_steps = max(1, s.total_steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / decay_steps)
    factor = 1.0 - progress if s.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return s.min_lr + (s.peak_lr - s.min_lr) * factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: LrSchedule) -> LambdaLR:
    """A LambdaLR following `lr_at`; the optimizer's lr must be schedule.peak_lr."""
    return LambdaLR(optimizer, lambda step: lr_at(step, schedule) / schedule.peak_lr)
