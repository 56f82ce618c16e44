"""The checkpoint layout in storage and its manifests: what makes a checkpoint exist.

    <checkpoint.uri>/step-00000500/                  one folder per checkpoint
        mp_rank_00_model_states.pt, zero_pp_rank_1_mp_rank_00_optim_states.pt, ...
        rng-rank00001.pt                             DeepSpeed's files and our RNG states, flat
        part-rank00000.json ... part-rank00007.json  one per rank: its files, sizes, SHA-256
        manifest.json                                the commit, written last by rank 0

A checkpoint is committed exactly when its manifest.json exists; the manifest
lists every file of every rank (name, size, SHA-256, the rank that wrote it)
and carries the job's config. Everything else in a step folder without a
manifest is an upload in progress or a leftover. Pure data and pure
functions: the threads that move the bytes live in streaming.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT = "kubetune.io/checkpoint-v1"
MANIFEST = "manifest.json"
_STEP_FOLDER = re.compile(r"step-(\d{8})")
_PART = re.compile(r"part-rank(\d{5})\.json")
# Files only their own rank loads; every other file of rank 0 (e.g. DeepSpeed's
# mp_rank_00_model_states.pt below ZeRO-3) is loaded by every rank.
_PER_RANK_FILE = re.compile(r"(^|_)(zero_pp_rank|expp_rank)_\d+_|^rng-rank\d+\.pt$")


def step_folder(step: int) -> str:
    """The folder name of the checkpoint after `step`: step-00000500."""
    return f"step-{step:08d}"


def part_name(rank: int) -> str:
    return f"part-rank{rank:05d}.json"


@dataclass(frozen=True)
class FileEntry:
    """One stored file of a checkpoint."""

    name: str
    """Path inside the step folder."""
    size: int
    """Bytes."""
    sha256: str
    """Hex SHA-256 of the content."""
    rank: int
    """The rank that wrote and uploaded it."""


@dataclass(frozen=True)
class PartManifest:
    """What one rank stored for one checkpoint; written after all its files are stored."""

    step: int
    rank: int
    world_size: int
    run_id: str
    """Which run wrote it: parts left behind by an earlier attempt never count."""
    files: tuple[FileEntry, ...]

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PartManifest:
        raw = json.loads(data)
        return cls(step=int(raw["step"]), rank=int(raw["rank"]), world_size=int(raw["world_size"]),
                   run_id=str(raw["run_id"]), files=tuple(FileEntry(**f) for f in raw["files"]))


@dataclass(frozen=True)
class Commit:
    """A checkpoint that was just committed, and how many committed ones the store keeps."""

    step: int
    uri: str
    """The step folder."""
    committed_at: str
    """RFC 3339, UTC: when its manifest was written."""
    committed: int
    bytes: int


@dataclass(frozen=True)
class CheckpointManifest:
    """The commit record of a checkpoint."""

    step: int
    world_size: int
    run_id: str
    committed_at: str
    """RFC 3339, UTC."""
    files: tuple[FileEntry, ...]
    config: dict[str, Any] = field(default_factory=dict)
    """The job's identity and spec (jobfile.job_record)."""
    evaluation: dict[str, Any] | None = None
    """{metric, value}: the evaluation metric at this step, when the step was evaluated and the
    best so far; retention keeps the best of these."""

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CheckpointManifest:
        raw = json.loads(data)
        if raw.get("format") != FORMAT:
            raise ValueError(f"unknown checkpoint format {raw.get('format')!r}")
        return cls(step=int(raw["step"]), world_size=int(raw["world_size"]), run_id=str(raw["run_id"]),
                   committed_at=str(raw["committed_at"]), files=tuple(FileEntry(**f) for f in raw["files"]),
                   config=dict(raw.get("config") or {}), evaluation=raw.get("evaluation"))

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def files_for_rank(manifest: CheckpointManifest, rank: int) -> list[FileEntry]:
    """The files `rank` must download to resume: its own, plus rank 0's files that every rank loads."""
    return [f for f in manifest.files
            if f.rank == rank or (f.rank == 0 and not _PER_RANK_FILE.search(f.name.rsplit("/", 1)[-1]))]


def merge_parts(parts: list[PartManifest], *, step: int, world_size: int, run_id: str) -> list[FileEntry] | None:
    """Every rank's files when all `world_size` parts of this run are present; None while some are
    missing. Raises ValueError when two ranks stored the same name."""
    mine = {p.rank: p for p in parts if p.run_id == run_id and p.step == step}
    if set(mine) != set(range(world_size)):
        return None
    files: dict[str, FileEntry] = {}
    for rank in range(world_size):
        for entry in mine[rank].files:
            if entry.name in files:
                raise ValueError(f"{step_folder(step)}/{entry.name} was stored by ranks "
                                 f"{files[entry.name].rank} and {rank}")
            files[entry.name] = entry
    return sorted(files.values(), key=lambda f: f.name)


@dataclass(frozen=True)
class Listing:
    """The step folders under a checkpoint URI, from one recursive listing."""

    keys: dict[int, list[str]]
    """Keys (relative to the checkpoint root) of each step folder."""

    @property
    def committed(self) -> list[int]:
        return sorted(s for s, keys in self.keys.items() if f"{step_folder(s)}/{MANIFEST}" in keys)

    @property
    def uncommitted(self) -> list[int]:
        committed = set(self.committed)
        return sorted(s for s in self.keys if s not in committed)

    def parts(self, step: int) -> list[str]:
        return [k for k in self.keys.get(step, []) if _PART.fullmatch(k.rsplit("/", 1)[-1])]


def listing(keys: list[str]) -> Listing:
    """Group keys by step folder; keys outside step folders are not the trainer's and are ignored."""
    grouped: dict[int, list[str]] = {}
    for key in keys:
        head = key.split("/", 1)[0]
        match = _STEP_FOLDER.fullmatch(head)
        if match and "/" in key:
            grouped.setdefault(int(match.group(1)), []).append(key)
    return Listing(grouped)


def retention_plan(found: Listing, keep_last: int, best: int | None = None) -> tuple[list[int], list[int]]:
    """(committed steps to delete, uncommitted steps to delete) after a commit.

    Keeps the newest `keep_last` committed checkpoints (always the newest one),
    and the `best` one besides. Uncommitted folders older than the newest commit
    are abandoned uploads (each rank uploads in step order, and the committer
    commits a pinned one before any newer one, so none of them is still in
    flight); newer ones may be uploading now and stay.
    """
    committed = found.committed
    if not committed:
        return [], []
    keep = max(1, keep_last)
    newest = committed[-1]
    return [s for s in committed[:-keep] if s != best], [s for s in found.uncommitted if s < newest]
