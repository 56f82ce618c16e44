"""Data: formats and loss masks, packing, the per-rank order and its resume, bad input."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import write_jsonl

from kubetune_api import DatasetSpec, StorageSpec, TrainingSpec
from kubetune_trainer.data import (
    FILLER,
    IGNORE_INDEX,
    BatchLayout,
    DataPosition,
    build_datasets,
    collate,
    eval_batches,
    micro_batches,
    split_records,
)
from kubetune_trainer.data.formats import tokenize_records
from kubetune_trainer.data.packing import pack, truncate
from kubetune_trainer.data.sampler import steps_per_epoch
from kubetune_trainer.data.sources import Record, read_records
from kubetune_trainer.errors import ConfigError, DataError
from kubetune_trainer.settings import Settings
from kubetune_trainer.staging import UriFiles


def datasets(root: Path, tokenizer: Any, train: Path, fmt: str = "text", *, max_positions: int | None = None,
             eval_split: float | None = None, **training: Any) -> Any:
    """build_datasets as the trainer calls it, on `train` (a file below `root`, which plays the
    mounted claims: pvc://<folder>/<file>)."""
    dataset = DatasetSpec(train=f"pvc://{train.relative_to(root)}", format=fmt, eval_split=eval_split)
    spec = TrainingSpec(max_steps=1, **training)
    return build_datasets(dataset, spec, tokenizer, max_positions=max_positions,
                          files=UriFiles(Settings(pvc_root=str(root)), StorageSpec()))


def learned_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    return str(tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]))


def one(tokenizer: Any, fmt: str, data: dict[str, Any]) -> Any:
    return tokenize_records([Record("mem:1", data)], fmt, tokenizer)[0]


# --- formats and masks


def test_text_learns_every_token_and_ends_with_eos(tokenizer: Any) -> None:
    ex = one(tokenizer, "text", {"text": "Kubernetes schedules pods."})
    assert ex.labels == ex.input_ids
    assert ex.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ex.input_ids, skip_special_tokens=True) == "Kubernetes schedules pods."


def test_prompt_completion_learns_only_the_completion(tokenizer: Any) -> None:
    ex = one(tokenizer, "prompt-completion", {"prompt": "Q: capital of France?\nA:", "completion": " Paris"})
    assert learned_text(tokenizer, ex.input_ids, ex.labels) == " Paris<|im_end|>"
    assert tokenizer.decode(ex.input_ids).startswith("Q: capital of France?\nA: Paris")


def test_chat_learns_only_assistant_turns(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]
    ex = one(tokenizer, "chat", {"messages": messages})
    # The whole conversation is exactly what the chat template renders...
    assert tokenizer.decode(ex.input_ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    # ...and the loss covers the assistant replies with their end-of-turn marker, nothing else.
    assert learned_text(tokenizer, ex.input_ids, ex.labels) == "Hello.<|im_end|>\nGoodbye.<|im_end|>\n"


# --- packing and batching


def test_packing_fills_blocks_and_keeps_masks(tokenizer: Any) -> None:
    rows = [{"prompt": f"question {i}?", "completion": f" answer {i}."} for i in range(20)]
    examples = tokenize_records([Record(f"f:{i}", r) for i, r in enumerate(rows)], "prompt-completion", tokenizer)
    fitted = pack(examples, 16)
    stream = [t for e in examples for t in e.input_ids]
    assert [t for s in fitted.samples for t in s.input_ids] == stream  # nothing lost or reordered
    assert all(len(s.input_ids) == 16 for s in fitted.samples[:-1])
    assert learned_text(tokenizer, stream, [t for e in examples for t in e.labels]) == "".join(
        f" answer {i}.<|im_end|>" for i in range(20))


def test_without_packing_long_examples_are_truncated_and_prompt_only_ones_dropped(tokenizer: Any) -> None:
    examples = tokenize_records([
        Record("f:1", {"prompt": "short", "completion": " yes"}),
        Record("f:2", {"prompt": "a very long prompt " * 20, "completion": " lost"}),
    ], "prompt-completion", tokenizer)
    fitted = truncate(examples, 12)
    assert len(fitted.samples) == 1 and fitted.dropped == 1 and fitted.first_dropped == "f:2"


def test_collate_pads_right_and_masks_padding(tokenizer: Any) -> None:
    examples = tokenize_records([Record("f:1", {"text": "a b c d e f"}), Record("f:2", {"text": "a"})],
                                "text", tokenizer)
    batch = collate(truncate(examples, 64).samples, pad_id=tokenizer.pad_token_id)
    lengths = [len(e.input_ids) for e in examples]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert (batch["labels"][1, lengths[1]:] == IGNORE_INDEX).all()


# --- the order of samples over ranks


def all_ranks(n: int, layout: BatchLayout, seed: int, position: DataPosition) -> list[list[list[int]]]:
    return [list(micro_batches(n, layout, seed=seed, rank=r, position=position)) for r in range(layout.world_size)]


def test_each_epoch_every_rank_sees_disjoint_samples_in_a_seeded_order() -> None:
    layout = BatchLayout(micro_batch_size=2, world_size=3, grad_accum=2)  # global batch 12
    ranks = all_ranks(50, layout, seed=7, position=DataPosition(epoch=0))
    seen = [i for batches in ranks for b in batches for i in b]
    assert len(seen) == len(set(seen)) == steps_per_epoch(50, layout) * 12 == 48
    assert ranks == all_ranks(50, layout, seed=7, position=DataPosition(epoch=0))  # deterministic
    assert ranks != all_ranks(50, layout, seed=7, position=DataPosition(epoch=1))  # reshuffled per epoch
    assert ranks != all_ranks(50, layout, seed=8, position=DataPosition(epoch=0))


def test_resuming_at_a_position_yields_exactly_the_remaining_batches() -> None:
    layout = BatchLayout(micro_batch_size=2, world_size=2, grad_accum=3)
    for rank in range(2):
        full = list(micro_batches(100, layout, seed=1, rank=rank, position=DataPosition(epoch=2)))
        resumed = list(micro_batches(100, layout, seed=1, rank=rank,
                                     position=DataPosition(epoch=2, step_in_epoch=3)))
        assert resumed == full[3 * layout.grad_accum:]


def test_eval_batches_cover_every_sample_once_and_keep_ranks_in_step() -> None:
    shards = [eval_batches(7, micro_batch_size=2, rank=r, world_size=3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # same number of forward passes everywhere
    real = sorted(i for s in shards for b in s for i in b if i != FILLER)
    assert real == list(range(7))


def test_too_little_data_for_one_global_batch_says_what_to_do() -> None:
    with pytest.raises(DataError, match=r"3 sequences .* fewer than one global batch \(8\)"):
        steps_per_epoch(3, BatchLayout(2, 2, 2))


# --- files: JSONL, Parquet, bad records


def test_bad_record_error_names_file_and_line(tmp_path: Path, tokenizer: Any) -> None:
    (tmp_path / "data").mkdir()
    path = write_jsonl(tmp_path / "data" / "train.jsonl", [{"text": "fine"}, {"text": "fine"}, {"txt": "typo"}])
    with pytest.raises(DataError, match=r"^pvc://data/train.jsonl:3: field 'text' must be a non-empty string \(missing\)"):
        datasets(tmp_path, tokenizer, path)


def test_invalid_json_line_fails_fast_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "broken"\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: not valid JSON"):
        read_records(str(path))


def test_empty_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="holds no records"):
        read_records(str(empty))
    with pytest.raises(DataError, match="dataset file not found"):
        read_records(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match=r"unsupported dataset file type '\.csv'"):
        read_records(str(tmp_path / "data.csv"))


def test_chat_record_without_assistant_turn_is_rejected(tmp_path: Path, tokenizer: Any) -> None:
    (tmp_path / "data").mkdir()
    path = write_jsonl(tmp_path / "data" / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"^pvc://data/chat.jsonl:1: no assistant message"):
        datasets(tmp_path, tokenizer, path, "chat")


def test_parquet_reads_like_jsonl_and_reports_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": messages}, {"messages": messages}]), path)
    records = read_records(str(path))
    assert [r.data["messages"] for r in records] == [messages, messages]
    assert records[1].where == f"{path} row 2"
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_records(str(broken))


def test_sequence_longer_than_the_model_allows_is_a_config_error(tmp_path: Path, tokenizer: Any) -> None:
    (tmp_path / "data").mkdir()
    path = write_jsonl(tmp_path / "data" / "train.jsonl", [{"text": "x"}])
    with pytest.raises(ConfigError, match=r"sequence length 4096 \(spec.training.maxSeqLength\) exceeds the model's maximum of 2048 tokens"):
        datasets(tmp_path, tokenizer, path, max_positions=2048, max_seq_length=4096)


def test_eval_fraction_holds_out_records_deterministically(tmp_path: Path, tokenizer: Any) -> None:
    records = [Record(f"f:{i}", {"text": f"record {i}"}) for i in range(20)]
    train, held = split_records(records, 0.25, seed=3)
    assert len(held) == 5 and len(train) == 15
    assert not {r.where for r in train} & {r.where for r in held}
    assert split_records(records, 0.25, seed=3) == (train, held)
    (tmp_path / "data").mkdir()
    path = write_jsonl(tmp_path / "data" / "train.jsonl", [r.data for r in records])
    data = datasets(tmp_path, tokenizer, path, eval_split=0.25, packing=False, seed=3)
    assert (data.train_records, data.eval_records) == (15, 5) and len(data.eval) == 5
