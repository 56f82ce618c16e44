"""The best step so far and early stopping, from the metric of each evaluation.

Pure state, kept identically on every rank (each sees the same all-reduced
metrics, so each decides the same), and saved in every checkpoint so that a
resumed run remembers its best step and its patience. The base model's
evaluation (step 0) is a baseline to compare with, never a candidate: "best"
is always a checkpoint that training produced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kubetune_api import improves


@dataclass
class MetricTracker:
    """Which step is best by `metric`, and whether training should stop (patience)."""

    metric: str
    """The metric that decides (spec.evaluation.metric or the task's default)."""
    patience: int | None = None
    """Evaluations without improvement after which training stops; None: never stop early."""
    min_delta: float = 0.0
    """Smallest change that counts as an improvement for early stopping."""
    best_step: int | None = None
    best_value: float | None = None
    stale: int = 0
    """Evaluations in a row without an improvement by more than min_delta."""
    recent: list[tuple[int, float]] = field(default_factory=list)
    """The latest evaluations (step, value), for the message that explains a stop."""

    def observe(self, step: int, metrics: dict[str, float]) -> bool:
        """Record an evaluation after training step `step` (> 0); True when it is the new best."""
        value = metrics[self.metric]
        enough = improves(self.metric, value, self.best_value, self.min_delta)
        self.stale = 0 if enough else self.stale + 1
        self.recent = [*self.recent, (step, value)][-max(self.patience or 1, 1) - 1:]
        if improves(self.metric, value, self.best_value):
            self.best_step, self.best_value = step, value
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.stale >= self.patience

    def stop_message(self) -> str:
        """Why training stops, with the metric history that made it stop."""
        history = ", ".join(f"{value:.6g} ({step})" for step, value in self.recent[-(self.patience or 1):])
        delta = f" by more than {self.min_delta:g}" if self.min_delta else ""
        return (f"{self.metric} did not improve on {self.best_value:.6g} (step {self.best_step}){delta} "
                f"for {self.stale} evaluations: {history}")

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of it."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any], *, patience: int | None, min_delta: float) -> MetricTracker:
        """The tracker a checkpoint kept, under the spec's current early-stopping settings."""
        return cls(metric=state["metric"], patience=patience, min_delta=min_delta,
                   best_step=state.get("best_step"), best_value=state.get("best_value"),
                   stale=int(state.get("stale", 0)), recent=[tuple(r) for r in state.get("recent", [])])
