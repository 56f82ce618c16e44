"""One evaluation over the whole evaluation set: every sample counted exactly once across ranks.

Each rank runs the forward pass over its shard (eval_batches pads shards with
filler rows so that every rank runs as many batches: ZeRO-3 forwards are
collective), adds up a few numbers for its real rows only, and one all-reduce
makes the totals global. metrics.py turns them into the task's metrics, the
same on every rank, so every rank takes the same early-stopping decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kubetune_api import Task
from kubetune_trainer.data import FILLER, IGNORE_INDEX, Collate, eval_batches
from kubetune_trainer.distributed import DistEnv, all_reduce_sum
from kubetune_trainer.metrics import Evaluation, classification_metrics, language_model_metrics


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(engine: Any, samples: Sequence[Any], collate: Collate, *, step: int, task: Task,
             labels: list[str] | None, micro_batch_size: int, env: DistEnv) -> Evaluation:
    """The task's metrics over `samples` at `step` (call on every rank, with the same samples)."""
    engine.eval()
    try:
        totals = _language_model_sums if task == "causal-lm" else _classification_sums
        sums = totals(engine, samples, collate, labels, micro_batch_size, env)
    finally:
        engine.train()
    if task == "causal-lm":
        loss_sum, correct, tokens = all_reduce_sum(sums, env)
        return Evaluation(step, language_model_metrics(loss_sum, correct, tokens))
    reduced = all_reduce_sum(sums, env)
    assert labels is not None
    confusion = np.rint(np.asarray(reduced[1:])).astype(np.int64).reshape(len(labels), len(labels))
    summary, details = classification_metrics(reduced[0], confusion, labels)
    return Evaluation(step, summary, details)


def _batches(samples: Sequence[Any], collate: Collate, micro_batch_size: int,
             env: DistEnv) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """This rank's batches and, for each, which rows are real (not fillers)."""
    out = []
    for indices in eval_batches(len(samples), micro_batch_size=micro_batch_size, rank=env.rank,
                                world_size=env.world_size):
        batch = collate([samples[0] if i == FILLER else samples[i] for i in indices], False)
        out.append((batch, torch.tensor([i != FILLER for i in indices])))
    return out


def _language_model_sums(engine: Any, samples: Sequence[Any], collate: Collate, labels: list[str] | None,
                         micro_batch_size: int, env: DistEnv) -> list[float]:
    """[summed loss, correctly predicted tokens, tokens] over the trained-on tokens."""
    loss_sum, correct, tokens = 0.0, 0, 0
    for batch, real in _batches(samples, collate, micro_batch_size, env):
        batch["labels"][~real] = IGNORE_INDEX  # fillers add nothing
        batch = _to_device(batch, engine.device)
        logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shifted = logits[:, :-1].flatten(0, 1).float()  # token t predicts token t + 1
        targets = batch["labels"][:, 1:].flatten()
        learned = targets != IGNORE_INDEX
        loss_sum += F.cross_entropy(shifted, targets, ignore_index=IGNORE_INDEX, reduction="sum").item()
        correct += int((shifted.argmax(-1)[learned] == targets[learned]).sum())
        tokens += int(learned.sum())
    return [loss_sum, float(correct), float(tokens)]


def _classification_sums(engine: Any, samples: Sequence[Any], collate: Collate, labels: list[str] | None,
                         micro_batch_size: int, env: DistEnv) -> list[float]:
    """[summed loss, confusion matrix counts (row-major: true label, predicted label)]."""
    assert labels is not None
    classes = len(labels)
    loss_sum, confusion = 0.0, torch.zeros(classes * classes, dtype=torch.float64)
    for batch, real in _batches(samples, collate, micro_batch_size, env):
        batch = _to_device(batch, engine.device)
        targets = batch.pop("labels")
        logits = engine(**batch).logits.float()
        real = real.to(logits.device)
        loss_sum += F.cross_entropy(logits[real], targets[real], reduction="sum").item()
        pairs = targets[real] * classes + logits[real].argmax(-1)
        confusion += torch.bincount(pairs.cpu(), minlength=classes * classes).double()
    return [loss_sum, *confusion.tolist()]
