"""The training loop: steps, evaluation, metrics and checkpoints, in one readable function.

The loop knows DeepSpeed's engine (forward, backward, step) and nothing about
where data, checkpoints or progress end up: it calls `Callback` hooks for that.
Every rank runs the same loop; collectives (loss averaging, eval, checkpoint)
happen at the same points on all of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F

from kubetune_api import FineTuneJobSpec
from kubetune_trainer.callbacks import Callback, StepMetrics
from kubetune_trainer.checkpoint import TrainState, save_checkpoint
from kubetune_trainer.data import (
    FILLER,
    IGNORE_INDEX,
    BatchLayout,
    DataPosition,
    Sample,
    collate,
    eval_batches,
    micro_batches,
)
from kubetune_trainer.distributed import DistEnv, all_reduce_sum


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

    @classmethod
    def for_spec(cls, spec: FineTuneJobSpec, steps_per_epoch: int, checkpoint_dir: str) -> LoopPlan:
        """The plan spec.training and spec.checkpoint ask for, given the steps one epoch takes."""
        training = spec.training
        return cls(layout=BatchLayout.for_spec(spec), steps_per_epoch=steps_per_epoch,
                   total_steps=training.total_steps(steps_per_epoch), seed=training.seed,
                   eval_every_steps=training.eval_every_steps or 0,
                   # The base model's loss, to compare with: only when evaluating along the way.
                   eval_at_start=training.eval_every_steps is not None,
                   checkpoint_every_steps=spec.checkpoint.every_steps, checkpoint_dir=checkpoint_dir)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _optimizer_steps(batches: Iterator[list[int]], grad_accum: int) -> Iterator[list[list[int]]]:
    """Group micro-batches into the grad_accum micro-batches of each optimizer step."""
    while chunk := list(islice(batches, grad_accum)):
        yield chunk


def _train_step(engine: Any, samples: list[Sample], step_batches: list[list[int]],
                pad_id: int) -> tuple[float, int]:
    """Forward and backward over one optimizer step's micro-batches: (mean loss, tokens) on this rank."""
    loss_sum, tokens = 0.0, 0
    for indices in step_batches:
        batch = _to_device(collate([samples[i] for i in indices], pad_id), engine.device)
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()  # DeepSpeed applies the update only at the accumulation boundary
        loss_sum += loss.item()
        tokens += int(batch["attention_mask"].sum())
    return loss_sum / len(step_batches), tokens


@torch.no_grad()
def evaluate(engine: Any, samples: list[Sample], *, micro_batch_size: int, env: DistEnv,
             pad_id: int) -> float:
    """Mean per-token loss over `samples`, exact across ranks (token-weighted, not batch-weighted)."""
    filler = Sample(samples[0].input_ids, [IGNORE_INDEX] * len(samples[0].input_ids))
    engine.eval()
    loss_sum, tokens = 0.0, 0
    for indices in eval_batches(len(samples), micro_batch_size=micro_batch_size, rank=env.rank,
                                world_size=env.world_size):
        batch = _to_device(collate([filler if i == FILLER else samples[i] for i in indices], pad_id),
                           engine.device)
        logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]  # token t predicts token t + 1
        loss_sum += F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                    ignore_index=IGNORE_INDEX, reduction="sum").item()
        tokens += int((labels != IGNORE_INDEX).sum())
    engine.train()
    total_loss, total_tokens = all_reduce_sum([loss_sum, tokens], env)
    return total_loss / max(total_tokens, 1.0)


def train(engine: Any, train_samples: list[Sample], eval_samples: list[Sample], plan: LoopPlan, *,
          env: DistEnv, pad_id: int, callbacks: Callback, start: TrainState,
          config: dict[str, Any] | None = None) -> TrainState:
    """Train from `start` to plan.total_steps; returns the final state."""
    layout = plan.layout

    def run_eval(step: int) -> None:
        if eval_samples:
            loss = evaluate(engine, eval_samples, micro_batch_size=layout.micro_batch_size, env=env,
                            pad_id=pad_id)
            callbacks.on_eval_end(step, loss)

    callbacks.on_train_start(start.step, plan.total_steps)
    if plan.eval_at_start and start.step == 0:
        run_eval(0)
    state, evaluated_at = start, -1
    started, steps_this_run = time.monotonic(), 0
    engine.train()
    while state.step < plan.total_steps:
        batches = micro_batches(len(train_samples), layout, seed=plan.seed, rank=env.rank,
                                position=state.position)
        for step_batches in _optimizer_steps(batches, layout.grad_accum):
            step_started = time.monotonic()
            learning_rate = float(engine.get_lr()[0])
            local_loss, local_tokens = _train_step(engine, train_samples, step_batches, pad_id)
            loss_sum, all_tokens = all_reduce_sum([local_loss, local_tokens], env)
            position = DataPosition(state.position.epoch, state.position.step_in_epoch + 1)
            state = TrainState(state.step + 1, position)
            steps_this_run += 1
            now = time.monotonic()
            grad_norm = engine.get_global_grad_norm()
            callbacks.on_step_end(StepMetrics(
                step=state.step,
                total_steps=plan.total_steps,
                epoch=position.epoch + position.step_in_epoch / plan.steps_per_epoch,
                loss=loss_sum / env.world_size,
                learning_rate=learning_rate,
                grad_norm=float(grad_norm) if grad_norm is not None else None,
                tokens_per_second=all_tokens / max(now - step_started, 1e-9),
                eta_seconds=(plan.total_steps - state.step) * (now - started) / steps_this_run,
            ))
            if plan.eval_every_steps and state.step % plan.eval_every_steps == 0:
                run_eval(state.step)
                evaluated_at = state.step
            if plan.checkpoint_dir and plan.checkpoint_every_steps and (
                    state.step % plan.checkpoint_every_steps == 0 or state.step == plan.total_steps):
                # The last step is saved too: a run that dies while exporting resumes with no retraining.
                blocked_since = time.monotonic()
                folder = save_checkpoint(engine, plan.checkpoint_dir, state, env, config or {})
                callbacks.on_checkpoint_saved(state.step, folder, time.monotonic() - blocked_since)
            if state.step >= plan.total_steps:
                break
        else:  # the epoch's data is used up
            state = TrainState(state.step, DataPosition(state.position.epoch + 1, 0))
    if evaluated_at != state.step:
        run_eval(state.step)
    callbacks.on_train_end(state.step)
    return state

