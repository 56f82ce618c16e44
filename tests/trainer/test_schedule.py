"""The learning-rate schedule, as a table a reader can check by hand."""

from __future__ import annotations

import pytest
import torch

from kubetune_trainer.schedule import LrSchedule, build_lr_scheduler, lr_at

COSINE = LrSchedule("cosine", peak_lr=1.0, warmup_steps=4, total_steps=14, min_lr=0.1)
LINEAR = LrSchedule("linear", peak_lr=1.0, warmup_steps=4, total_steps=14)
CONSTANT = LrSchedule("constant", peak_lr=1.0, warmup_steps=4, total_steps=14)


@pytest.mark.parametrize(("schedule", "step", "lr"), [
    (COSINE, 0, 0.2), (COSINE, 3, 0.8),  # warmup: (step + 1) / (warmup + 1)
    (COSINE, 4, 1.0), (COSINE, 9, 0.55), (COSINE, 14, 0.1), (COSINE, 100, 0.1),
    (LINEAR, 0, 0.2), (LINEAR, 4, 1.0), (LINEAR, 9, 0.5), (LINEAR, 14, 0.0), (LINEAR, 20, 0.0),
    (CONSTANT, 1, 0.4), (CONSTANT, 4, 1.0), (CONSTANT, 1000, 1.0),
])
def test_lr_at(schedule: LrSchedule, step: int, lr: float) -> None:
    assert lr_at(step, schedule) == pytest.approx(lr)


def test_torch_scheduler_follows_lr_at_and_resumes_from_its_state() -> None:
    schedule = LrSchedule("cosine", peak_lr=3e-4, warmup_steps=2, total_steps=10)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=schedule.peak_lr)
    scheduler = build_lr_scheduler(optimizer, schedule)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([lr_at(s, schedule) for s in range(6)])

    # A new scheduler loaded from the saved state continues where the old one stopped.
    fresh_optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=schedule.peak_lr)
    resumed = build_lr_scheduler(fresh_optimizer, schedule)
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.get_last_lr()[0] == pytest.approx(lr_at(6, schedule))
