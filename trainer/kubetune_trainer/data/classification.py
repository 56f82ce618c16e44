"""Sequence classification data: a text (or a text pair) and a label per record.

Each record becomes one sample: the tokenizer's encoding of the text (with its
special tokens, and token type ids for pairs where the model uses them),
truncated to spec.training.maxSeqLength, and the label's class id. Batches are
padded to their longest member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from kubetune_trainer.data.formats import Keys, string_field
from kubetune_trainer.data.labels import LabelIds
from kubetune_trainer.data.sources import Problems, Record, each
from kubetune_trainer.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class TextSample:
    """One encoded text (or pair) and its class id."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    label: int


def text_samples(records: list[Record], tokenizer: PreTrainedTokenizerBase, keys: Keys, labels: LabelIds,
                 max_length: int, problems: Problems = None) -> list[TextSample]:
    """Encode every record; the first bad one raises DataError naming its location (or goes to
    `problems`)."""
    text_key, pair_key, label_key = keys["text"], keys["text_pair"], keys["label"]
    shape = f'{{"{text_key}": "...", "{label_key}": "..."}} (and optionally "{pair_key}")'

    def sample(record: Record) -> TextSample:
        text = string_field(record, text_key, shape)
        pair = string_field(record, pair_key, shape) if record.data.get(pair_key) is not None else None
        label = labels.of(record, label_key)
        encoded = tokenizer(text, pair, truncation=True, max_length=max_length)
        if not encoded["input_ids"]:
            raise DataError(f"{record.where}: the text encodes to no tokens")
        types = encoded.get("token_type_ids")
        return TextSample(list(encoded["input_ids"]), list(types) if types is not None else None, label)

    return each(records, sample, problems)


def collate_texts(samples: list[TextSample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample: input_ids, attention_mask, token_type_ids (when the
    tokenizer gives them) and labels (one class id per sample)."""
    width = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    types = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        input_ids[row, :n] = torch.tensor(s.input_ids)
        attention_mask[row, :n] = 1
        if s.token_type_ids is not None:
            types[row, :n] = torch.tensor(s.token_type_ids)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask,
             "labels": torch.tensor([s.label for s in samples], dtype=torch.long)}
    if samples[0].token_type_ids is not None:
        batch["token_type_ids"] = types
    return batch
