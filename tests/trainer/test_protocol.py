"""The checkpoint streaming protocol without training: uploaders per rank, rank 0's commit,
retention, and what a resume picks, on a local folder and on MinIO.

Ranks are simulated by one uploader each, fed folders of random files the way
the loop feeds DeepSpeed's shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.errors import ConfigError, StorageError
from kubetune_trainer.manifest import (
    CheckpointManifest,
    Commit,
    FileEntry,
    PartManifest,
    files_for_rank,
    listing,
    merge_parts,
    retention_plan,
)
from kubetune_trainer.resume import download_checkpoint, newest_committed, remove_uncommitted
from kubetune_trainer.settings import Settings
from kubetune_trainer.storage import FsStore, S3Store, Store, Upload, s3_client
from kubetune_trainer.streaming import CheckpointCommitter, CheckpointUploader

WORLD = 2


def shard_folder(root: Path, rank: int, step: int, size: int = 3000) -> Path:
    """What DeepSpeed and the RNG capture leave in a rank's folder after `step`."""
    folder = root / f"rank-{rank}" / f"step-{step:08d}"
    folder.mkdir(parents=True)
    (folder / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(os.urandom(size))
    (folder / f"rng-rank{rank:05d}.pt").write_bytes(os.urandom(100))
    if rank == 0:
        (folder / "mp_rank_00_model_states.pt").write_bytes(os.urandom(size))
    return folder


class Gang:
    """WORLD uploaders and rank 0's committer on one store."""

    def __init__(self, store: Store, *, keep_last: int = 2, run_id: str = "run-a") -> None:
        self.commits: list[Commit] = []
        self.committer = CheckpointCommitter(store, world_size=WORLD, run_id=run_id, keep_last=keep_last,
                                             config={"spec": {"x": 1}}, give_up_after=30,
                                             on_commit=self.commits.append)
        self.committer.poll_seconds = 0.1
        self.uploaders = [CheckpointUploader(store, rank=r, world_size=WORLD, run_id=run_id, give_up_after=30)
                          for r in range(WORLD)]

    def save(self, root: Path, step: int, ranks: Sequence[int] = range(WORLD)) -> None:
        self.committer.on_checkpoint_saved(step, root)
        for rank in ranks:
            self.uploaders[rank].on_checkpoint_saved(step, shard_folder(root, rank, step))

    def commit(self, root: Path, steps: Sequence[int], timeout: float) -> None:
        """Save each step on every rank and wait until it is stored and committed."""
        for step in steps:
            self.save(root, step)
            for uploader in self.uploaders:
                uploader.drain(timeout=timeout)
            self.committer.wait_committed(step, timeout=timeout)

    def close(self) -> None:
        for worker in [*self.uploaders, self.committer]:
            worker.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_intact(store: Store, manifest: CheckpointManifest) -> None:
    """Every file a manifest lists is stored, with its size and checksum."""
    for entry in manifest.files:
        data = store.get_bytes(f"step-{manifest.step:08d}/{entry.name}")
        assert data is not None, entry.name
        assert (len(data), sha(data)) == (entry.size, entry.sha256), entry.name


def run_protocol(store: Store, tmp_path: Path) -> None:
    gang = Gang(store, keep_last=2)
    try:
        gang.commit(tmp_path, (2, 4, 6), timeout=60)
    finally:
        gang.close()
    found = listing(store.list(""))
    assert found.committed == [4, 6] and found.uncommitted == []  # keepLast 2
    manifest = newest_committed(store)
    assert manifest is not None and manifest.step == 6 and manifest.world_size == WORLD
    assert manifest.config == {"spec": {"x": 1}}
    assert sorted(f.name for f in manifest.files) == [
        "mp_rank_00_model_states.pt", "rng-rank00000.pt", "rng-rank00001.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert_intact(store, manifest)
    assert [c.step for c in gang.commits] == [2, 4, 6] and gang.commits[-1].committed == 2
    assert not list(tmp_path.rglob("*.pt"))  # local copies go once stored


def test_uploaders_and_commit_on_a_folder(tmp_path: Path) -> None:
    run_protocol(FsStore(tmp_path / "store"), tmp_path / "local")


@pytest.mark.cluster
def test_uploaders_and_commit_on_minio(s3: Any, bucket: str, tmp_path: Path, cluster: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in cluster.local.env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    from kubetune_api import StorageSpec

    settings = Settings(upload_chunk_bytes=5 * 2**20)
    store = S3Store(f"s3://{bucket}/ckpt/", s3_client(StorageSpec(addressing_style="path")), settings)
    run_protocol(store, tmp_path)
    assert s3.head_object(Bucket=bucket, Key="ckpt/step-00000006/manifest.json")
    # The uploader records each file's SHA-256 with the object; a replaced file is caught.
    head = s3.head_object(Bucket=bucket, Key="ckpt/step-00000006/rng-rank00001.pt")
    assert len(head["Metadata"]["sha256"]) == 64


def test_a_step_is_committed_only_with_every_ranks_part_of_this_run(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    # A part left behind by an earlier attempt of the job does not count.
    stale = PartManifest(2, 1, WORLD, "old-run", (FileEntry("x.pt", 1, sha(b"x"), 1),))
    store.put_bytes("step-00000002/part-rank00001.json", stale.to_json())
    gang = Gang(store, run_id="new-run")
    try:
        gang.save(tmp_path, 2, ranks=[0])  # rank 1 never stores its part
        gang.uploaders[0].drain(timeout=30)
        with pytest.raises(Exception, match="not committed within"):
            gang.committer.wait_committed(2, timeout=1.5)
        assert listing(store.list("")).committed == []
        # A later step that completes is committed; the abandoned one goes with retention.
        gang.save(tmp_path, 4)
        for uploader in gang.uploaders:
            uploader.drain(timeout=30)
        gang.committer.wait_committed(4, timeout=30)
    finally:
        gang.close()
    found = listing(store.list(""))
    assert found.committed == [4] and found.uncommitted == []


class GatedStore(FsStore):
    """Uploads wait for a gate: a store that is slower than training."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.started = threading.Event()

    def upload(self, uploads: Iterable[Upload]) -> dict[str, Exception]:
        self.started.set()
        self.gate.wait(30)
        return super().upload(uploads)


def test_a_waiting_checkpoint_is_superseded_by_a_newer_one(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "store")
    uploader = CheckpointUploader(store, rank=0, world_size=1, run_id="r", give_up_after=30)
    try:
        uploader.on_checkpoint_saved(2, shard_folder(tmp_path, 0, 2))
        assert store.started.wait(10)  # step 2 is uploading
        waiting = shard_folder(tmp_path, 0, 4)
        uploader.on_checkpoint_saved(4, waiting)
        uploader.on_checkpoint_saved(6, shard_folder(tmp_path, 0, 6))
        assert not waiting.exists()  # dropped from the local disk, never uploaded
        store.gate.set()
        uploader.drain(timeout=30)
    finally:
        uploader.close()
    assert uploader.uploaded == [2, 6]


def test_a_store_that_refuses_fails_the_rank_with_its_reason(tmp_path: Path) -> None:
    class Refusing(FsStore):
        def upload(self, uploads: Iterable[Upload]) -> dict[str, Exception]:
            return {u.key: StorageError("s3://b/p: S3 refused the request (AccessDenied)") for u in uploads}

    uploader = CheckpointUploader(Refusing(tmp_path / "store"), rank=0, world_size=1, run_id="r", give_up_after=30)
    try:
        uploader.on_checkpoint_saved(2, shard_folder(tmp_path, 0, 2))
        with pytest.raises(StorageError, match="AccessDenied"):
            uploader.drain(timeout=30)
    finally:
        uploader.close()


def test_resume_takes_the_newest_commit_and_removes_the_rest(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    gang = Gang(store, keep_last=3)
    try:
        gang.commit(tmp_path, (2, 4), timeout=30)
    finally:
        gang.close()
    # A killed run left step 6 half uploaded (no manifest), one file still being copied.
    store.put_bytes("step-00000006/zero_pp_rank_0_mp_rank_00_optim_states.pt", b"partial")
    (tmp_path / "store" / "step-00000006" / ".kubetune-partial-rng-rank00000.pt.x1y2").write_bytes(b"half")
    assert remove_uncommitted(store) == [6]
    assert not (tmp_path / "store" / "step-00000006").exists()
    manifest = newest_committed(store)
    assert manifest is not None and manifest.step == 4
    point = download_checkpoint(store, manifest, rank=1, world_size=WORLD, into=tmp_path / "resume",
                                give_up_after=5)
    # Rank 1 needs its own files and the model states every rank loads, not rank 0's optimizer shard.
    assert sorted(p.name for p in point.folder.iterdir()) == [
        "mp_rank_00_model_states.pt", "rng-rank00001.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    with pytest.raises(ConfigError, match="written by a world of 2 processes, this run has 4"):
        download_checkpoint(store, manifest, rank=0, world_size=4, into=tmp_path / "r4", give_up_after=5)
    # A file that changed after the commit is caught before DeepSpeed reads it.
    store.put_bytes("step-00000004/rng-rank00001.pt", b"tampered")
    with pytest.raises(ConfigError, match="does not match its manifest"):
        download_checkpoint(store, manifest, rank=1, world_size=WORLD, into=tmp_path / "again", give_up_after=5)


def test_retention_keeps_the_newest_and_whatever_may_still_be_uploading() -> None:
    keys = [f"step-{s:08d}/{name}" for s in (2, 4, 6, 8, 10) for name in ("a.pt", "manifest.json")
            if not (s in (4, 10) and name == "manifest.json")]
    found = listing([*keys, "notes.txt", "other/step-00000001/a"])
    assert (found.committed, found.uncommitted) == ([2, 6, 8], [4, 10])
    assert retention_plan(found, keep_last=2) == ([2], [4])  # 10 may still be uploading
    assert retention_plan(found, keep_last=5) == ([], [4])


def test_merge_parts_refuses_a_name_stored_by_two_ranks() -> None:
    parts = [PartManifest(2, r, 2, "r", (FileEntry("same.pt", 1, "0" * 64, r),)) for r in range(2)]
    with pytest.raises(ValueError, match="stored by ranks 0 and 1"):
        merge_parts(parts, step=2, world_size=2, run_id="r")
    assert merge_parts(parts[:1], step=2, world_size=2, run_id="r") is None


def test_files_for_rank() -> None:
    names = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "rng-rank00000.pt",
             "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng-rank00001.pt"]
    manifest = CheckpointManifest(2, 2, "r", "t", tuple(
        FileEntry(n, 1, "0" * 64, 1 if "rank_1" in n or "rank00001" in n else 0) for n in names))
    assert [f.name for f in files_for_rank(manifest, 1)] == [
        "mp_rank_00_model_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng-rank00001.pt"]
    assert json.loads(manifest.to_json())["format"] == "kubetune.io/checkpoint-v1"
