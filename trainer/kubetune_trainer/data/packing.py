"""Fitting tokenized examples into fixed-length training sequences, and batching them.

With packing, examples are concatenated (each ends with EOS) and cut into
blocks of exactly max_seq_length tokens: no compute is spent on padding, and an
example may continue in the next block. Without packing, each example is
truncated to max_seq_length and batches are padded to their longest member.
Sequences without a single learnable token are dropped: a micro-batch of them
would have no loss at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kubetune_trainer.data.formats import IGNORE_INDEX, Example


@dataclass(frozen=True)
class Sample:
    """One training sequence (at most max_seq_length tokens)."""

    input_ids: list[int]
    """Token ids."""
    labels: list[int]
    """Loss labels, IGNORE_INDEX where no loss is taken."""


@dataclass(frozen=True)
class Fitted:
    """Sequences ready for batching, and what was lost on the way."""

    samples: list[Sample]
    """The training sequences."""
    dropped: int
    """Examples (without packing) or blocks (with packing) left with no learnable token."""
    first_dropped: str | None
    """Location of the first dropped example, for the log line."""
    truncated: int = 0
    """Examples cut to max_seq_length (without packing; with it none are, they continue)."""


def _learnable(labels: list[int]) -> bool:
    return any(label != IGNORE_INDEX for label in labels)


def pack(examples: list[Example], seq_len: int) -> Fitted:
    """Concatenate all examples and cut the stream into blocks of seq_len (the last may be shorter)."""
    ids = [t for e in examples for t in e.input_ids]
    labels = [t for e in examples for t in e.labels]
    samples, dropped = [], 0
    for start in range(0, len(ids), seq_len):
        block = Sample(ids[start:start + seq_len], labels[start:start + seq_len])
        if _learnable(block.labels):
            samples.append(block)
        else:
            dropped += 1
    return Fitted(samples, dropped, None)


def truncate(examples: list[Example], seq_len: int) -> Fitted:
    """One sample per example, cut to seq_len tokens."""
    samples, dropped, first = [], 0, None
    truncated = sum(len(e.input_ids) > seq_len for e in examples)
    for e in examples:
        sample = Sample(e.input_ids[:seq_len], e.labels[:seq_len])
        if _learnable(sample.labels):
            samples.append(sample)
        else:
            dropped += 1
            first = first or e.where
    return Fitted(samples, dropped, first, truncated)


def fit(examples: list[Example], seq_len: int, packing: bool) -> Fitted:
    return pack(examples, seq_len) if packing else truncate(examples, seq_len)


def collate(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample: input_ids, labels (IGNORE_INDEX on padding), attention_mask."""
    width = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        input_ids[row, :n] = torch.tensor(s.input_ids)
        labels[row, :n] = torch.tensor(s.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
