"""The tokenized-data cache: a data set tokenized once (by the preflight), read by every rank.

A cache entry is a folder `<spec.cache_uri>/<key>/`, its name a hash of everything that
determines the samples (the preflight computes it: the inputs' content tags, the tokenizer's
files, the format, fields, maxSeqLength, packing, task, labels, eval split). Each split (train,
eval) is stored as shards of flat arrays, in NumPy's .npy format so that a worker memory-maps
them instead of holding the data set in memory:

    train-00000.input_ids.npy   int32, every sample's tokens one after another
    train-00000.offsets.npy     int64, where each sample starts (and one past the last)
    train-00000.labels.npy      int32: per token (causal-lm) or per sample (classification)
    train-00000.token_type_ids.npy  int32 per token (classification of text pairs only)
    entry.json                  what is there and the preflight's counts; written last

An entry without entry.json is incomplete and never read. Samples come back as the same
`Sample` / `TextSample` values the tokenizer produced, in the same order, so batches, the
sampler's order and resume positions are those of a run that tokenized the data itself.
"""

from __future__ import annotations

import bisect
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from kubetune_trainer.data.classification import TextSample
from kubetune_trainer.data.packing import Sample
from kubetune_trainer.errors import DataError
from kubetune_trainer.logs import log_event
from kubetune_trainer.storage import Store, Upload, download_all, file_sha256, retry, upload_all

CACHE_FORMAT = 1
"""Changes whenever the layout or the meaning of an entry changes (it is part of every key)."""
ENTRY = "entry.json"
SHARD_TOKENS = 1 << 24
"""Tokens per shard at most (64 MiB of int32): shards download and map independently."""
_COMPLETE = ".kubetune-complete"


@dataclass(frozen=True)
class CacheEntry:
    """What entry.json says: the splits' shards and the preflight's counts."""

    kind: str  # "lm" (Sample) or "text" (TextSample)
    splits: dict[str, list[dict[str, Any]]]  # split -> shards: {"name", "samples", "files": {file: sha256}}
    facts: dict[str, Any]  # labels, record counts, dropped, first_dropped, tokens, truncated

    def samples(self, split: str) -> int:
        return sum(int(s["samples"]) for s in self.splits.get(split, ()))

    def to_json(self) -> bytes:
        return json.dumps({"format": CACHE_FORMAT, "kind": self.kind, "splits": self.splits, "facts": self.facts},
                          sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> CacheEntry:
        try:
            raw = json.loads(data)
            if raw.get("format") != CACHE_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {CACHE_FORMAT}")
            return cls(str(raw["kind"]), dict(raw["splits"]), dict(raw["facts"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{where}: not a readable tokenized-data cache entry ({e}); delete the folder and "
                            "the next preflight writes it again") from None


def _kind(samples: Sequence[Any]) -> str:
    return "text" if samples and isinstance(samples[0], TextSample) else "lm"


def _write_shard(samples: Sequence[Any], folder: Path, name: str) -> dict[str, Any]:
    lengths = np.fromiter((len(s.input_ids) for s in samples), dtype=np.int64, count=len(samples))
    offsets = np.zeros(len(samples) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    arrays: dict[str, np.ndarray] = {
        "input_ids": np.fromiter((t for s in samples for t in s.input_ids), dtype=np.int32, count=int(offsets[-1])),
        "offsets": offsets,
    }
    if _kind(samples) == "lm":
        arrays["labels"] = np.fromiter((t for s in samples for t in s.labels), dtype=np.int32, count=int(offsets[-1]))
    else:
        arrays["labels"] = np.fromiter((s.label for s in samples), dtype=np.int32, count=len(samples))
        if samples and samples[0].token_type_ids is not None:
            arrays["token_type_ids"] = np.fromiter((t for s in samples for t in s.token_type_ids), dtype=np.int32,
                                                   count=int(offsets[-1]))
    files = {}
    for field, array in arrays.items():
        path = folder / f"{name}.{field}.npy"
        np.save(path, array, allow_pickle=False)
        files[path.name] = file_sha256(path)
    return {"name": name, "samples": len(samples), "files": files}


def write_split(samples: Sequence[Any], folder: Path, split: str) -> list[dict[str, Any]]:
    """Write one split's samples as shards of at most SHARD_TOKENS tokens into `folder`."""
    shards: list[dict[str, Any]] = []
    start, tokens = 0, 0
    for i, sample in enumerate(samples):
        tokens += len(sample.input_ids)
        if tokens > SHARD_TOKENS and i > start:
            shards.append(_write_shard(samples[start:i], folder, f"{split}-{len(shards):05d}"))
            start, tokens = i, len(sample.input_ids)
    if start < len(samples):
        shards.append(_write_shard(samples[start:], folder, f"{split}-{len(shards):05d}"))
    return shards


class CachedSamples(Sequence[Any]):
    """One split of a cache entry, memory-mapped: `samples[i]` is the i-th Sample or TextSample."""

    def __init__(self, folder: Path, kind: str, shards: list[dict[str, Any]]) -> None:
        self.kind = kind
        self._arrays = []
        self._starts = [0]
        for shard in shards:
            names = {f.split(".")[-2]: f for f in shard["files"]}
            self._arrays.append({field: np.load(folder / file, mmap_mode="r", allow_pickle=False)
                                 for field, file in names.items()})
            self._starts.append(self._starts[-1] + int(shard["samples"]))

    def __len__(self) -> int:
        return self._starts[-1]

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = bisect.bisect_right(self._starts, index) - 1
        arrays, i = self._arrays[shard], index - self._starts[shard]
        begin, end = int(arrays["offsets"][i]), int(arrays["offsets"][i + 1])
        ids = arrays["input_ids"][begin:end].tolist()
        if self.kind == "lm":
            return Sample(ids, arrays["labels"][begin:end].tolist())
        types = arrays["token_type_ids"][begin:end].tolist() if "token_type_ids" in arrays else None
        return TextSample(ids, types, int(arrays["labels"][i]))


def publish_entry(store: Store, key: str, train: Sequence[Any], evals: Sequence[Any], facts: dict[str, Any],
                  *, give_up_after: float) -> CacheEntry:
    """Write the splits to the store under `key`/ and commit them with entry.json, last."""
    with tempfile.TemporaryDirectory(prefix="kubetune-cache-") as tmp:
        folder = Path(tmp)
        entry = CacheEntry(_kind(train), {"train": write_split(train, folder, "train"),
                                          "eval": write_split(evals, folder, "eval")}, facts)
        upload_all(store, [Upload(folder / f, f"{key}/{f}", sha) for shards in entry.splits.values()
                           for shard in shards for f, sha in shard["files"].items()],
                   what=f"writing the tokenized data to {store.uri}{key}/", give_up_after=give_up_after)
        retry(lambda: store.put_bytes(f"{key}/{ENTRY}", entry.to_json()), what=f"committing {store.uri}{key}/",
              give_up_after=give_up_after)
    return entry


def find_entry(store: Store, key: str, *, give_up_after: float) -> CacheEntry | None:
    """The committed entry `key`, or None."""
    data = retry(lambda: store.get_bytes(f"{key}/{ENTRY}"), what=f"reading {store.uri}{key}/",
                 give_up_after=give_up_after)
    return None if data is None else CacheEntry.from_json(data, f"{store.uri}{key}/{ENTRY}")


def fetch_entry(store: Store, key: str, into: Path, *, give_up_after: float) -> tuple[CacheEntry, Path]:
    """Download entry `key` into the local folder `into` (once: a complete folder is reused) and
    return it with that folder. Callers hold a node lock around it (staging.node_lock)."""
    done = into / _COMPLETE
    if done.is_file():
        return CacheEntry.from_json((into / ENTRY).read_bytes(), str(into / ENTRY)), into
    entry = find_entry(store, key, give_up_after=give_up_after)
    if entry is None:
        raise DataError(f"{store.uri}{key}/: the tokenized data set the preflight wrote is gone (no {ENTRY}); "
                        "was the cache cleaned while the job ran? Recreate the job to run its preflight again")
    into.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=into.parent))
    try:
        download_all(store, [(f"{key}/{f}", tmp / f) for shards in entry.splits.values() for shard in shards
                             for f in shard["files"]], what=f"downloading {store.uri}{key}/", give_up_after=give_up_after)
        for shards in entry.splits.values():
            for shard in shards:
                for f, sha in shard["files"].items():
                    if file_sha256(tmp / f) != sha:
                        raise DataError(f"{store.uri}{key}/{f}: its content does not match the checksum in "
                                        f"{ENTRY}; delete the folder and recreate the job")
        (tmp / ENTRY).write_bytes(entry.to_json())
        (tmp / _COMPLETE).touch()
        shutil.rmtree(into, ignore_errors=True)
        tmp.rename(into)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log_event("data_cache_fetched", uri=f"{store.uri}{key}/", train_sequences=entry.samples("train"),
              eval_sequences=entry.samples("eval"))
    return entry, into
