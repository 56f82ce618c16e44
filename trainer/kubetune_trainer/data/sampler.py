"""Which samples each rank trains on, in which order: a pure function of its arguments.

Each epoch has one global order, a permutation seeded by (seed, epoch). Optimizer
step k of the epoch consumes the k-th slice of global_batch samples; inside it,
micro-step m on rank r takes the micro_batch_size samples at
`m * world_size * micro_batch_size + r * micro_batch_size`. Nothing depends on
earlier iteration, so resuming at (epoch, step) yields exactly the batches an
uninterrupted run would have seen. Samples that do not fill a last global batch
are skipped for that epoch (a different tail each epoch, by the permutation).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from kubetune_api import FineTuneJobSpec
from kubetune_trainer.errors import DataError

FILLER = -1
"""Index of a filler slot in an eval batch: it keeps ranks in lock-step and adds no loss."""


@dataclass(frozen=True)
class DataPosition:
    """Where training stands in the data: the next step starts here."""

    epoch: int = 0
    """Zero-based epoch."""
    step_in_epoch: int = 0
    """Optimizer steps already taken in this epoch."""


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step is split over ranks and micro-steps."""

    micro_batch_size: int
    """Samples per forward pass on one rank."""
    world_size: int
    """Data-parallel ranks."""
    grad_accum: int
    """Micro-steps per optimizer step."""

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.world_size * self.grad_accum

    @classmethod
    def for_spec(cls, spec: FineTuneJobSpec) -> BatchLayout:
        """The layout of the spec's world of processes (kubetune_api's batch arithmetic)."""
        world = spec.world_size
        return cls(spec.training.micro_batch_size, world, spec.training.gradient_accumulation_steps(world))


def steps_per_epoch(num_samples: int, layout: BatchLayout) -> int:
    """Optimizer steps in one epoch; at least one global batch of samples is required."""
    steps = num_samples // layout.global_batch
    if steps == 0:
        raise DataError(f"the training data has {num_samples} sequences after tokenization, fewer than "
                        f"one global batch ({layout.global_batch}); add data, lower "
                        "spec.training.globalBatchSize, or turn off spec.training.packing")
    return steps


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The global order of sample indices in one epoch."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def micro_batches(num_samples: int, layout: BatchLayout, *, seed: int, rank: int,
                  position: DataPosition) -> Iterator[list[int]]:
    """This rank's micro-batches (lists of sample indices) from `position` to the end of its epoch."""
    order = epoch_order(num_samples, seed, position.epoch)
    mbs, world = layout.micro_batch_size, layout.world_size
    for step in range(position.step_in_epoch, steps_per_epoch(num_samples, layout)):
        for micro in range(layout.grad_accum):
            start = step * layout.global_batch + (micro * world + rank) * mbs
            yield order[start:start + mbs].tolist()


def eval_batches(num_samples: int, *, micro_batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """This rank's eval micro-batches: round-robin shards, padded with FILLER to the same count on
    every rank (ZeRO-3 forward passes are collective, so every rank must run as many)."""
    shard = list(range(rank, num_samples, world_size))
    per_rank = -(-num_samples // world_size)
    shard += [FILLER] * (per_rank - len(shard))
    return [shard[i:i + micro_batch_size] for i in range(0, per_rank, micro_batch_size)]
