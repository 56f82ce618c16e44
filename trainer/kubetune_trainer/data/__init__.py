"""Training and eval data: files -> records -> tokenized examples -> fixed-length samples.

`build_datasets` is the one entry; the modules beside it each do one step
(sources: reading with locations, formats: tokens and loss masks, packing:
sequences and batches, sampler: the deterministic per-rank order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kubetune_api import DatasetSpec, TrainingSpec
from kubetune_trainer.data.formats import IGNORE_INDEX, Example, tokenize_records
from kubetune_trainer.data.packing import Sample, collate, fit
from kubetune_trainer.data.sampler import (
    FILLER,
    BatchLayout,
    DataPosition,
    eval_batches,
    micro_batches,
)
from kubetune_trainer.data.sources import FileAccess, Record, read_records
from kubetune_trainer.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "FILLER", "IGNORE_INDEX", "BatchLayout", "DataPosition", "Datasets", "Example",
    "FileAccess", "Record", "Sample", "build_datasets", "collate", "eval_batches", "micro_batches",
    "split_records",
]


@dataclass(frozen=True)
class Datasets:
    """What training consumes, plus counts worth a log line."""

    train: list[Sample]
    """Training sequences."""
    eval: list[Sample]
    """Eval sequences (empty when there is no eval data)."""
    train_records: int
    """Records read for training (after the eval split)."""
    eval_records: int
    """Records used for evaluation."""
    dropped: int
    """Training sequences dropped for having no learnable token (see packing)."""
    first_dropped: str | None
    """Location of the first dropped record, when known."""


def split_records(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out round(fraction * n) records (at least one) chosen by `seed`: (train, eval)."""
    count = max(1, round(fraction * len(records)))
    if count >= len(records):
        raise ConfigError(f"spec.dataset.evalSplit={fraction} leaves no training records out of "
                          f"{len(records)}; lower it or give spec.dataset.eval")
    held_out = set(np.random.default_rng(seed).permutation(len(records))[:count].tolist())
    train = [r for i, r in enumerate(records) if i not in held_out]
    return train, [r for i, r in enumerate(records) if i in held_out]


def build_datasets(dataset: DatasetSpec, training: TrainingSpec, tokenizer: PreTrainedTokenizerBase, *,
                   max_positions: int | None, files: FileAccess) -> Datasets:
    """Read (through `files`: staging.UriFiles in the trainer), split, tokenize and fit
    spec.dataset's training (and eval) records into sequences of training.maxSeqLength tokens
    (packed or not)."""
    seq_len = training.max_seq_length
    if max_positions is not None and seq_len > max_positions:
        raise ConfigError(f"sequence length {seq_len} (spec.training.maxSeqLength) exceeds the "
                          f"model's maximum of {max_positions} tokens (max_position_embeddings); lower it to "
                          f"{max_positions} or less")
    train_records = read_records(dataset.train, files)
    if dataset.eval is not None:
        eval_records = read_records(dataset.eval, files)
    elif dataset.eval_split is not None:
        train_records, eval_records = split_records(train_records, dataset.eval_split, training.seed)
    else:
        eval_records = []
    keys = dataset.record_keys()
    train = fit(tokenize_records(train_records, dataset.format, tokenizer, keys), seq_len, training.packing)
    if not train.samples:
        raise DataError(f"{dataset.train}: no record has a learnable token within "
                        f"spec.training.maxSeqLength={seq_len} (first: {train.first_dropped})")
    evals = fit(tokenize_records(eval_records, dataset.format, tokenizer, keys), seq_len, training.packing)
    return Datasets(train.samples, evals.samples, len(train_records), len(eval_records),
                    train.dropped, train.first_dropped)
