"""Hooks the training loop calls, so that checkpoint upload and progress reporting plug in
without the loop knowing about S3 or Kubernetes.

The loop calls every hook on every rank, in order; a callback that should act
on rank 0 only (logging, status patches) is registered only there. Hooks must
be cheap or hand work to a thread: the loop waits for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from kubetune_trainer.logs import log_event
from kubetune_trainer.metrics import Evaluation


@dataclass(frozen=True)
class StepMetrics:
    """What one optimizer step achieved, averaged over all ranks."""

    step: int
    """Optimizer steps completed, counting this one."""
    total_steps: int
    """Optimizer steps the run will take."""
    epoch: float
    """Fractional epochs completed."""
    loss: float
    """Training loss of this step (mean over micro-batches and ranks)."""
    learning_rate: float
    """Learning rate this step used."""
    grad_norm: float | None
    """Global gradient norm before clipping, when DeepSpeed reports it."""
    tokens_per_second: float | None
    """Non-padding tokens processed per second over all ranks during this step (text tasks)."""
    samples_per_second: float
    """Samples (sequences or images) processed per second over all ranks during this step."""
    eta_seconds: float
    """Estimated seconds until the last step, from this run's average step time."""


class Callback:
    """No-op base: override the hooks you need."""

    def on_train_start(self, start_step: int, total_steps: int) -> None:
        """Before the first step (start_step > 0 after a resume)."""

    def on_step_end(self, metrics: StepMetrics) -> None:
        """After every optimizer step."""

    def on_eval_end(self, evaluation: Evaluation, best: tuple[int, float] | None) -> None:
        """After an evaluation (step 0: the base model, before training); `best`: the best
        (step, value) of the deciding metric so far."""

    def on_checkpoint_saved(self, step: int, path: Path, seconds: float = 0.0, *, pinned: bool = False,
                            metric: tuple[str, float] | None = None) -> None:
        """After every rank wrote its shards of the checkpoint at `step` to `path` (its own folder);
        `seconds`: how long the loop was blocked writing it; `pinned`: the best checkpoint so far,
        which must be stored and kept; `metric`: the deciding metric's value at this step."""

    def on_stopped_early(self, step: int, message: str) -> None:
        """Training ends at `step`, before its last step, because the metric stopped improving."""

    def on_train_end(self, step: int) -> None:
        """After the last step, before the final model is exported."""


class CallbackList(Callback):
    """Calls each callback's hook in order."""

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_train_start(self, start_step: int, total_steps: int) -> None:
        for c in self.callbacks:
            c.on_train_start(start_step, total_steps)

    def on_step_end(self, metrics: StepMetrics) -> None:
        for c in self.callbacks:
            c.on_step_end(metrics)

    def on_eval_end(self, evaluation: Evaluation, best: tuple[int, float] | None) -> None:
        for c in self.callbacks:
            c.on_eval_end(evaluation, best)

    def on_checkpoint_saved(self, step: int, path: Path, seconds: float = 0.0, *, pinned: bool = False,
                            metric: tuple[str, float] | None = None) -> None:
        for c in self.callbacks:
            c.on_checkpoint_saved(step, path, seconds, pinned=pinned, metric=metric)

    def on_stopped_early(self, step: int, message: str) -> None:
        for c in self.callbacks:
            c.on_stopped_early(step, message)

    def on_train_end(self, step: int) -> None:
        for c in self.callbacks:
            c.on_train_end(step)


class LogLines(Callback):
    """JSON log lines for steps, evals and checkpoints (register on rank 0 only)."""

    def __init__(self, every_steps: int = 1) -> None:
        self.every_steps = every_steps

    def on_train_start(self, start_step: int, total_steps: int) -> None:
        log_event("train_start", start_step=start_step, total_steps=total_steps)

    def on_step_end(self, metrics: StepMetrics) -> None:
        if metrics.step % self.every_steps == 0 or metrics.step == metrics.total_steps:
            fields = asdict(metrics)
            for key in ("loss", "learning_rate", "grad_norm"):
                if fields[key] is not None:
                    fields[key] = float(f"{fields[key]:.6g}")
            fields.update(epoch=round(metrics.epoch, 4), samples_per_second=round(metrics.samples_per_second, 2),
                          eta_seconds=round(metrics.eta_seconds))
            if metrics.tokens_per_second is None:
                del fields["tokens_per_second"]
            else:
                fields["tokens_per_second"] = round(metrics.tokens_per_second, 1)
            log_event("step", **fields)

    def on_eval_end(self, evaluation: Evaluation, best: tuple[int, float] | None) -> None:
        shown = {name: float(f"{value:.6g}") for name, value in evaluation.metrics.items()}
        extra = {"best_step": best[0], "best_value": float(f"{best[1]:.6g}")} if best else {}
        log_event("eval", step=evaluation.step, **shown, **extra)

    def on_checkpoint_saved(self, step: int, path: Path, seconds: float = 0.0, *, pinned: bool = False,
                            metric: tuple[str, float] | None = None) -> None:
        log_event("checkpoint_saved", step=step, path=str(path), stall_seconds=round(seconds, 3), best=pinned)

    def on_stopped_early(self, step: int, message: str) -> None:
        log_event("stopped_early", step=step, reason=message)

    def on_train_end(self, step: int) -> None:
        log_event("train_end", step=step)
