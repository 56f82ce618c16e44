"""Training and eval data: files -> records -> samples of the task -> batches.

`build_datasets` is the one entry; the modules beside it each do one step
(sources: reading with locations; for causal LMs formats: tokens and loss masks,
packing: sequences and batches; classification: texts and labels; images:
images and labels; labels: the label set; sampler: the deterministic per-rank
order, the same for every task).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kubetune_api import DatasetSpec, Task, TrainingSpec
from kubetune_trainer.data.cache import CachedSamples, CacheEntry
from kubetune_trainer.data.classification import TextSample, collate_texts, text_samples
from kubetune_trainer.data.formats import IGNORE_INDEX, Example, tokenize_records
from kubetune_trainer.data.images import ImageBatches, ImageSample, image_samples
from kubetune_trainer.data.labels import LabelIds, label_names
from kubetune_trainer.data.packing import Sample, collate, fit
from kubetune_trainer.data.sampler import (
    FILLER,
    BatchLayout,
    DataPosition,
    eval_batches,
    micro_batches,
)
from kubetune_trainer.data.sources import FileAccess, Problems, Record, read_records
from kubetune_trainer.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "FILLER", "IGNORE_INDEX", "BatchLayout", "Collate", "DataPosition", "Datasets", "Example",
    "FileAccess", "ImageSample", "Record", "Sample", "TextSample", "build_datasets", "cached_datasets", "check_seq_length", "collate",
    "eval_batches", "micro_batches", "split_records",
]

Collate = Callable[[list[Any], bool], dict[str, torch.Tensor]]
"""Samples -> a batch of tensors for the model's forward (the bool: a training batch)."""


@dataclass(frozen=True)
class Datasets:
    """What training consumes, plus counts worth a log line."""

    train: Sequence[Any]
    """Training samples (Sample, TextSample or ImageSample, by task)."""
    eval: Sequence[Any]
    """Eval samples (empty when there is no eval data)."""
    collate: Collate
    """How samples of this task become a batch."""
    labels: list[str] | None
    """The classification's label names in class-id order (None for causal-lm)."""
    train_records: int
    """Records read for training (after the eval split)."""
    eval_records: int
    """Records used for evaluation."""
    dropped: int
    """Training sequences dropped for having no learnable token (see packing)."""
    first_dropped: str | None
    """Location of the first dropped record, when known."""
    truncated: int = 0
    """Training records cut to maxSeqLength (causal-lm without packing)."""


def split_records(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out round(fraction * n) records (at least one) chosen by `seed`: (train, eval)."""
    count = max(1, round(fraction * len(records)))
    if count >= len(records):
        raise ConfigError(f"spec.dataset.evalSplit={fraction} leaves no training records out of "
                          f"{len(records)}; lower it or give spec.dataset.eval")
    held_out = set(np.random.default_rng(seed).permutation(len(records))[:count].tolist())
    train = [r for i, r in enumerate(records) if i not in held_out]
    return train, [r for i, r in enumerate(records) if i in held_out]


def check_seq_length(training: TrainingSpec, max_positions: int | None) -> None:
    """spec.training.maxSeqLength fits the model's positions (None: the model sets no limit)."""
    if max_positions is not None and training.max_seq_length > max_positions:
        raise ConfigError(f"sequence length {training.max_seq_length} (spec.training.maxSeqLength) exceeds "
                          f"the model's maximum of {max_positions} tokens (max_position_embeddings); lower "
                          f"it to {max_positions} or less")


def build_datasets(dataset: DatasetSpec, training: TrainingSpec, preprocessor: Any, *,
                   max_positions: int | None, files: FileAccess, task: Task = "causal-lm",
                   problems: Problems = None) -> Datasets:
    """Read (through `files`: staging.UriFiles in the trainer) and split spec.dataset's training (and
    eval) records, and turn them into samples of `task`. `preprocessor` is the model's tokenizer
    (text tasks) or image processor. The first bad record raises DataError, or with `problems` every
    bad record is recorded there and left out (the preflight's full scan)."""
    if task != "image-classification":
        check_seq_length(training, max_positions)
    train_records = read_records(dataset.train, files, problems)
    if dataset.eval is not None:
        eval_records = read_records(dataset.eval, files, problems)
    elif dataset.eval_split is not None:
        train_records, eval_records = split_records(train_records, dataset.eval_split, training.seed)
    else:
        eval_records = []
    keys = dataset.record_keys()
    if task == "causal-lm":
        return _language_model_data(dataset, training, preprocessor, train_records, eval_records, problems)
    labels = LabelIds(label_names(dataset.labels, train_records, keys["label"], skip_bad=problems is not None),
                      declared=bool(dataset.labels))
    collate_fn: Collate
    train: list[Any]
    evals: list[Any]
    if task == "sequence-classification":
        pad_id = int(preprocessor.pad_token_id)
        train = text_samples(train_records, preprocessor, keys, labels, training.max_seq_length, problems)
        evals = text_samples(eval_records, preprocessor, keys, labels, training.max_seq_length, problems)
        collate_fn = text_collate(pad_id)
    else:
        train = image_samples(train_records, keys, labels, files, problems)
        evals = image_samples(eval_records, keys, labels, files, problems)
        collate_fn = ImageBatches(preprocessor, augment=dataset.augment)
    return Datasets(train, evals, collate_fn, labels.names, len(train_records), len(eval_records), 0, None)


def text_collate(pad_id: int) -> Collate:
    return lambda samples, _training: collate_texts(samples, pad_id)


def lm_collate(pad_id: int) -> Collate:
    return lambda samples, _training: collate(samples, pad_id)


def _language_model_data(dataset: DatasetSpec, training: TrainingSpec, tokenizer: PreTrainedTokenizerBase,
                         train_records: list[Record], eval_records: list[Record], problems: Problems) -> Datasets:
    """Token sequences of training.maxSeqLength tokens (packed or not) with their loss masks."""
    seq_len, keys = training.max_seq_length, dataset.record_keys()
    train = fit(tokenize_records(train_records, dataset.format, tokenizer, keys, problems), seq_len, training.packing)
    if not train.samples and not problems:
        raise DataError(f"{dataset.train}: no record has a learnable token within "
                        f"spec.training.maxSeqLength={seq_len} (first: {train.first_dropped})")
    evals = fit(tokenize_records(eval_records, dataset.format, tokenizer, keys, problems), seq_len, training.packing)
    return Datasets(train.samples, evals.samples, lm_collate(int(tokenizer.pad_token_id)), None,
                    len(train_records), len(eval_records), train.dropped, train.first_dropped, train.truncated)


def cached_datasets(entry: CacheEntry, folder: Path, preprocessor: Any) -> Datasets:
    """The datasets of a tokenized-data cache entry (data/cache.py) fetched into `folder`: the same
    samples, in the same order, as build_datasets gave the preflight that wrote it."""
    facts = entry.facts
    pad_id = int(preprocessor.pad_token_id)
    train, evals = (CachedSamples(folder, entry.kind, entry.splits.get(split, [])) for split in ("train", "eval"))
    return Datasets(train, evals, lm_collate(pad_id) if entry.kind == "lm" else text_collate(pad_id),
                    facts.get("labels"), int(facts["train_records"]), int(facts["eval_records"]),
                    int(facts.get("dropped", 0)), facts.get("first_dropped"), int(facts.get("truncated", 0)))
