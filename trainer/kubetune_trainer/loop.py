"""The training loop: steps, evaluation, the best step, early stopping and checkpoints, in one
readable function.

The loop knows DeepSpeed's engine (forward, backward, step) and nothing about
where data, checkpoints or progress end up: it calls `Callback` hooks for that.
Every rank runs the same loop; collectives (loss averaging, eval, checkpoint)
happen at the same points on all of them, and every rank takes the same
decisions (best step, stop) from the same all-reduced metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch

from kubetune_api import FineTuneJobSpec, Task
from kubetune_trainer.callbacks import Callback, StepMetrics
from kubetune_trainer.checkpoint import TrainState, save_checkpoint
from kubetune_trainer.data import BatchLayout, Collate, DataPosition, micro_batches
from kubetune_trainer.distributed import DistEnv, all_reduce_sum
from kubetune_trainer.evaluate import evaluate
from kubetune_trainer.selection import MetricTracker


@dataclass(frozen=True)
class LoopPlan:
    """How long to train and when to evaluate and checkpoint."""

    layout: BatchLayout
    """Micro-batch size, world size and gradient accumulation."""
    steps_per_epoch: int
    """Optimizer steps in one pass over the training samples."""
    total_steps: int
    """Optimizer steps of the whole run."""
    seed: int
    """Seed of the data order."""
    eval_every_steps: int = 0
    """Evaluate every this many steps (0: only at the end)."""
    eval_at_start: bool = False
    """Evaluate once before the first step (not after a resume)."""
    checkpoint_every_steps: int = 0
    """Save a checkpoint every this many steps and after the last one (0: never)."""
    checkpoint_dir: str | None = None
    """This rank's local folder for the checkpoints it writes (streaming.py uploads them)."""
    task: Task = "causal-lm"
    """What the model learns (decides the evaluation's metrics)."""

    @classmethod
    def for_spec(cls, spec: FineTuneJobSpec, steps_per_epoch: int, checkpoint_dir: str) -> LoopPlan:
        """The plan spec.training and spec.checkpoint ask for, given the steps one epoch takes."""
        training = spec.training
        return cls(layout=BatchLayout.for_spec(spec), steps_per_epoch=steps_per_epoch,
                   total_steps=training.total_steps(steps_per_epoch), seed=training.seed,
                   eval_every_steps=training.eval_every_steps or 0,
                   # The base model's metrics, to compare with: only when evaluating along the way.
                   eval_at_start=training.eval_every_steps is not None,
                   checkpoint_every_steps=spec.checkpoint.every_steps, checkpoint_dir=checkpoint_dir,
                   task=spec.task)


@dataclass(frozen=True)
class LoopData:
    """What the loop trains and evaluates on."""

    train: Sequence[Any]
    eval: Sequence[Any]
    collate: Collate
    labels: list[str] | None = None


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _optimizer_steps(batches: Iterator[list[int]], grad_accum: int) -> Iterator[list[list[int]]]:
    """Group micro-batches into the grad_accum micro-batches of each optimizer step."""
    while chunk := list(islice(batches, grad_accum)):
        yield chunk


def _train_step(engine: Any, data: LoopData, step_batches: list[list[int]]) -> tuple[float, int, int]:
    """Forward and backward over one optimizer step's micro-batches: (mean loss, tokens, samples)
    on this rank; tokens are 0 where batches have no tokens (images)."""
    loss_sum, tokens, samples = 0.0, 0, 0
    for indices in step_batches:
        batch = _to_device(data.collate([data.train[i] for i in indices], True), engine.device)
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()  # DeepSpeed applies the update only at the accumulation boundary
        loss_sum += loss.item()
        if "attention_mask" in batch:
            tokens += int(batch["attention_mask"].sum())
        samples += len(indices)
    return loss_sum / len(step_batches), tokens, samples


class StopRequested(Exception):
    """Some rank was asked to stop (SIGTERM): every rank stopped after `state`, saved unless
    `saved` is False (no checkpoints configured, or nothing trained yet)."""

    def __init__(self, state: TrainState, saved: bool) -> None:
        super().__init__(f"stop requested at step {state.step}")
        self.state, self.saved = state, saved


def train(engine: Any, data: LoopData, plan: LoopPlan, *, env: DistEnv, callbacks: Callback,
          start: TrainState, tracker: MetricTracker, config: dict[str, Any] | None = None,
          stop_requested: Callable[[], bool] = lambda: False) -> TrainState:
    """Train from `start` to plan.total_steps, or until early stopping; returns the final state.
    When `stop_requested()` turns true on any rank, every rank stops after the same step, saves it
    and raises StopRequested."""
    layout = plan.layout

    def run_eval(step: int) -> bool:
        """Evaluate at `step`; True when the step is the new best (step 0 is only a baseline)."""
        if not data.eval:
            return False
        evaluation = evaluate(engine, data.eval, data.collate, step=step, task=plan.task, labels=data.labels,
                              micro_batch_size=layout.micro_batch_size, env=env)
        is_best = step > 0 and tracker.observe(step, evaluation.metrics)
        best = (tracker.best_step, tracker.best_value) if tracker.best_step is not None else None
        callbacks.on_eval_end(evaluation, best)  # type: ignore[arg-type]
        return is_best

    def save(state: TrainState, pinned: bool) -> None:
        blocked_since = time.monotonic()
        snapshot = TrainState(state.step, state.position, stopped_early=stopped, selection=tracker.state())
        folder = save_checkpoint(engine, str(plan.checkpoint_dir), snapshot, env, config or {})
        metric = None
        if tracker.best_step == state.step and tracker.best_value is not None:
            metric = (tracker.metric, tracker.best_value)
        callbacks.on_checkpoint_saved(state.step, folder, time.monotonic() - blocked_since, pinned=pinned,
                                      metric=metric)

    callbacks.on_train_start(start.step, plan.total_steps)
    if plan.eval_at_start and start.step == 0:
        run_eval(0)
    # A run that stopped early and is started again (e.g. after a crash while exporting) stays stopped.
    state, evaluated_at, stopped = start, -1, start.stopped_early
    started, steps_this_run = time.monotonic(), 0
    engine.train()
    while state.step < plan.total_steps and not stopped:
        batches = micro_batches(len(data.train), layout, seed=plan.seed, rank=env.rank, position=state.position)
        for step_batches in _optimizer_steps(batches, layout.grad_accum):
            step_started = time.monotonic()
            learning_rate = float(engine.get_lr()[0])
            local_loss, local_tokens, local_samples = _train_step(engine, data, step_batches)
            # One collective per step: the loss, the throughput and every rank's stop vote.
            loss_sum, all_tokens, all_samples, stop_votes = all_reduce_sum(
                [local_loss, local_tokens, local_samples, 1.0 if stop_requested() else 0.0], env)
            position = DataPosition(state.position.epoch, state.position.step_in_epoch + 1)
            state = TrainState(state.step + 1, position)
            steps_this_run += 1
            now = time.monotonic()
            grad_norm = engine.get_global_grad_norm()
            seconds = max(now - step_started, 1e-9)
            callbacks.on_step_end(StepMetrics(
                step=state.step,
                total_steps=plan.total_steps,
                epoch=position.epoch + position.step_in_epoch / plan.steps_per_epoch,
                loss=loss_sum / env.world_size,
                learning_rate=learning_rate,
                grad_norm=float(grad_norm) if grad_norm is not None else None,
                tokens_per_second=all_tokens / seconds if all_tokens else None,
                samples_per_second=all_samples / seconds,
                eta_seconds=(plan.total_steps - state.step) * (now - started) / steps_this_run,
            ))
            last = state.step >= plan.total_steps
            is_best = False
            # The last step is evaluated here, before its checkpoint, so that the checkpoint knows
            # whether it is the best one.
            if (plan.eval_every_steps and state.step % plan.eval_every_steps == 0) or (last and data.eval):
                is_best = run_eval(state.step)
                evaluated_at = state.step
                stopped = tracker.should_stop and not last
            if plan.checkpoint_dir and plan.checkpoint_every_steps and (
                    state.step % plan.checkpoint_every_steps == 0 or last or is_best or stopped):
                # The last step is saved too: a run that dies while exporting resumes with no retraining;
                # so is the best one (kept by retention, published with output.select best) and the
                # one an early stop ends at.
                save(state, pinned=is_best)
            if stopped:
                callbacks.on_stopped_early(state.step, tracker.stop_message())
                break
            if stop_votes and not last:
                saved = plan.checkpoint_dir is not None and plan.checkpoint_every_steps > 0
                if saved and not (state.step % plan.checkpoint_every_steps == 0 or is_best):
                    save(state, pinned=False)
                raise StopRequested(state, saved)
            if last:
                break
        else:  # the epoch's data is used up
            state = TrainState(state.step, DataPosition(state.position.epoch + 1, 0))
    if evaluated_at != state.step and not stopped:
        run_eval(state.step)  # e.g. a restart that found the last step already committed
    callbacks.on_train_end(state.step)
    return TrainState(state.step, state.position, stopped_early=stopped, selection=tracker.state())
