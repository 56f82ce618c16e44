"""Checkpoint streaming: every rank uploads its shards in the background; rank 0 commits.

The protocol (layout in manifest.py):

1. The loop writes a checkpoint to local disk (each rank its own folder) and
   hands it to this rank's `CheckpointUploader`; training continues at once.
2. The uploader hashes and uploads the rank's files (multipart, concurrent;
   failures retried with backoff for settings.upload_give_up_seconds), checks
   nothing is missing, writes the rank's part manifest last and deletes the
   local copy. It works in step order; a checkpoint still waiting when a newer
   one arrives is dropped (the newer one supersedes it), so a slow or absent
   store never fills the local disk with more than two checkpoints. A pinned
   checkpoint (the best by the evaluation metric so far) is never dropped.
3. Rank 0's `CheckpointCommitter` polls for the part manifests of the steps it
   expects. Once all ranks' parts of a step are present (from this run), it
   checks every listed file in the store (size and recorded SHA-256), then
   writes manifest.json: the commit, with the step's evaluation metric when it
   has one. It commits in step order; an older step that never completed while
   a newer one did was superseded on some rank and is abandoned, unless it is
   pinned: then the newer ones wait for it.
4. After a commit it applies retention: committed checkpoints beyond keepLast go
   (manifest first, so a half-deleted one is never taken for committed), except
   the best committed one by the metric (its manifest says), and so do abandoned
   folders older than the commit; never the newest commit, never a folder that
   may still be uploading.

Failures surface on the training thread: `raise_if_failed` at each step, and
`drain` / `wait_committed` at the end of the run, the only place training waits.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_api import format_timestamp, improves, utc_now
from kubetune_trainer.background import BackgroundWorker
from kubetune_trainer.callbacks import Callback, StepMetrics
from kubetune_trainer.errors import CheckpointError, StorageError, StorageUnavailable
from kubetune_trainer.logs import log_event
from kubetune_trainer.manifest import (
    MANIFEST,
    CheckpointManifest,
    Commit,
    FileEntry,
    PartManifest,
    listing,
    merge_parts,
    part_name,
    retention_plan,
    step_folder,
)
from kubetune_trainer.storage import Store, Upload, file_sha256, raise_first_failure, retry


@dataclass(frozen=True)
class Expected:
    """A checkpoint saved on every rank that the committer waits for."""

    pinned: bool = False
    metric: tuple[str, float] | None = None


@dataclass(frozen=True)
class Pending:
    step: int
    folder: Path
    pinned: bool = False


class CheckpointUploader(BackgroundWorker, Callback):
    """Uploads this rank's checkpoint folders in the background, in step order."""

    name = "uploader"

    def __init__(self, store: Store, *, rank: int, world_size: int, run_id: str,
                 give_up_after: float) -> None:
        super().__init__()
        self.store, self.rank, self.world_size, self.run_id = store, rank, world_size, run_id
        self.give_up_after = give_up_after
        self._queue: list[Pending] = []
        self._busy = False
        self.uploaded: list[int] = []
        self.start()

    # -- training thread
    def on_checkpoint_saved(self, step: int, path: Path, seconds: float = 0.0, *, pinned: bool = False,
                            metric: tuple[str, float] | None = None) -> None:
        self.raise_if_failed()
        with self._cond:
            for old in self._queue:  # not started yet: the new checkpoint supersedes it, unless pinned
                if not old.pinned:
                    log_event("checkpoint_superseded", step=old.step, rank=self.rank, by=step)
                    shutil.rmtree(old.folder, ignore_errors=True)
            self._queue = [*(old for old in self._queue if old.pinned), Pending(step, path, pinned)]
            self._cond.notify_all()

    def on_step_end(self, metrics: StepMetrics) -> None:
        self.raise_if_failed()

    @property
    def busy(self) -> bool:
        """A checkpoint is uploading or waiting to."""
        return self._busy or bool(self._queue)

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every queued checkpoint is stored (or uploading failed for good)."""
        self._wait_until(lambda: not (self._queue or self._busy), timeout,
                         f"{self.store.uri}: checkpoint uploads did not finish in {{:.0f}}s")

    # -- upload thread
    def _run(self) -> None:
        while not self.stopping:
            with self._cond:
                while not self._queue and not self.stopping:
                    self._cond.wait()
                if self.stopping:
                    return
                job = self._queue.pop(0)
                self._busy = True
            try:
                self._upload(job)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _upload(self, job: Pending) -> None:
        started = time.monotonic()
        folder_name = step_folder(job.step)
        # Largest first, each submitted as soon as it is hashed: the next file is hashed while the
        # previous ones upload, so hashing costs little more than the first file's.
        paths = sorted((p for p in job.folder.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
        entries: list[FileEntry] = []
        uploads: list[Upload] = []

        def hashed() -> Iterator[Upload]:
            for path in paths:
                name = str(path.relative_to(job.folder))
                digest = file_sha256(path)
                entries.append(FileEntry(name, path.stat().st_size, digest, self.rank))
                uploads.append(Upload(path, f"{folder_name}/{name}", digest))
                yield uploads[-1]

        remaining: Iterable[Upload] = hashed()

        def on_retry(attempt: int, error: Exception, delay: float) -> None:
            log_event("upload_retry", step=job.step, rank=self.rank, attempt=attempt,
                      delay_seconds=round(delay, 1), error=str(error))

        def upload_remaining() -> None:
            nonlocal remaining
            failures = self.store.upload(remaining)
            remaining = [u for u in uploads if u.key in failures]
            raise_first_failure(failures)

        what = f"uploading {self.store.uri.rstrip('/')}/{folder_name}/ (rank {self.rank})"
        retry(upload_remaining, what=what, give_up_after=self.give_up_after, on_retry=on_retry,
              stop=self._stop)
        part = PartManifest(job.step, self.rank, self.world_size, self.run_id,
                            tuple(sorted(entries, key=lambda e: e.name)))
        # The part manifest goes last: it says every file above is stored.
        retry(lambda: self.store.put_bytes(f"{folder_name}/{part_name(self.rank)}", part.to_json()),
              what=what, give_up_after=self.give_up_after, on_retry=on_retry, stop=self._stop)
        seconds = time.monotonic() - started
        total = sum(e.size for e in entries)
        log_event("checkpoint_uploaded", step=job.step, rank=self.rank, files=len(entries), bytes=total,
                  seconds=round(seconds, 3), mb_per_second=round(total / 2**20 / max(seconds, 1e-9), 1))
        shutil.rmtree(job.folder, ignore_errors=True)
        self.uploaded.append(job.step)


class CheckpointCommitter(BackgroundWorker, Callback):
    """Rank 0: commits each checkpoint once every rank's part is stored, then applies retention."""

    name = "committer"
    poll_seconds = 1.0

    def __init__(self, store: Store, *, world_size: int, run_id: str, keep_last: int,
                 config: dict[str, Any], give_up_after: float,
                 on_commit: Callable[[Commit], None] | None = None) -> None:
        super().__init__()
        self.store, self.world_size, self.run_id = store, world_size, run_id
        self.keep_last, self.config, self.give_up_after = keep_last, config, give_up_after
        self.on_commit = on_commit
        self._expected: dict[int, Expected] = {}
        self._rejected: set[int] = set()
        self._parts: dict[str, PartManifest] = {}  # part manifests never change once written
        self._metrics: dict[int, tuple[str, float] | None] = {}  # by step, from commits and manifests
        self.committed: list[int] = []
        self.start()

    def on_checkpoint_saved(self, step: int, path: Path, seconds: float = 0.0, *, pinned: bool = False,
                            metric: tuple[str, float] | None = None) -> None:
        self.raise_if_failed()
        self.expect(step, pinned=pinned, metric=metric)

    def on_step_end(self, metrics: StepMetrics) -> None:
        self.raise_if_failed()

    def expect(self, step: int, *, pinned: bool = False, metric: tuple[str, float] | None = None) -> None:
        """A checkpoint of `step` was saved on every rank; commit it once all parts are stored.
        `pinned`: it may not be abandoned; `metric`: its evaluation metric, for its manifest."""
        with self._cond:
            self._expected[step] = Expected(pinned, metric)
            self._cond.notify_all()

    def wait_committed(self, step: int, timeout: float | None = None, *, exactly: bool = False) -> None:
        """Block until `step` (or, unless `exactly`, a later one) is committed; raise if that cannot
        happen."""
        def committed() -> bool:
            if step in self.committed or (not exactly and any(s >= step for s in self.committed)):
                return True
            if step in self._rejected:
                raise CheckpointError(f"{self.store.uri}: checkpoint {step_folder(step)} failed its "
                                      "checks and was not committed (see the checkpoint_rejected log line)")
            return False

        self._wait_until(committed, timeout,
                         f"{self.store.uri}: checkpoint {step_folder(step)} was not committed within {{:.0f}}s")

    def _run(self) -> None:
        failing_since: float | None = None
        attempt = 0
        while not self.stopping:
            with self._cond:
                expected = sorted(self._expected)
            delay = self.poll_seconds
            if expected:
                try:
                    self._commit_ready(expected)
                    failing_since, attempt = None, 0
                except StorageUnavailable as e:
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > self.give_up_after:
                        raise StorageUnavailable(f"committing checkpoints in {self.store.uri}: gave up "
                                                 f"after {self.give_up_after:.0f}s of failures; last: {e}") from None
                    attempt += 1
                    delay = min(30.0, self.poll_seconds * 2**attempt)
                    log_event("commit_retry", attempt=attempt, delay_seconds=delay, error=str(e))
            with self._cond:
                if not self.stopping:
                    self._cond.wait(delay)

    def _commit_ready(self, expected: list[int]) -> None:
        """Commit every expected step whose parts are all stored, oldest first; abandon an older
        unpinned one that a newer ready one shows was superseded; wait for an older pinned one."""
        found = listing(self.store.list(""))
        ready: dict[int, list[FileEntry]] = {}
        for step in expected:
            parts = []
            for key in found.parts(step):
                if key not in self._parts:
                    data = self.store.get_bytes(key)
                    if data is None:
                        continue
                    self._parts[key] = PartManifest.from_json(data)
                parts.append(self._parts[key])
            try:
                files = merge_parts(parts, step=step, world_size=self.world_size, run_id=self.run_id)
            except ValueError as e:
                self._reject(step, str(e))
                continue
            if files is not None:
                ready[step] = files
        if not ready:
            return
        newest = max(ready)
        for step in expected:
            if step > newest:
                break
            entry = self._expected.get(step)
            if entry is None:  # rejected above
                continue
            if step not in ready:
                if entry.pinned:
                    return  # every rank uploads in step order: it comes before the newer ones
                with self._cond:
                    self._expected.pop(step, None)  # superseded on some rank: abandoned
                continue
            problem = self._verify(step, ready[step])
            if problem:
                self._reject(step, problem)
                continue
            self._commit(step, ready[step], entry.metric)
            with self._cond:
                self._expected.pop(step, None)
            self._parts = {k: p for k, p in self._parts.items() if p.step > step}

    def _verify(self, step: int, files: list[FileEntry]) -> str | None:
        """Every listed file is in the store with the listed size and checksum (None) or what is wrong."""
        for entry in files:
            info = self.store.head(f"{step_folder(step)}/{entry.name}")
            if info is None:
                return f"{entry.name} is missing"
            if info.size != entry.size:
                return f"{entry.name} has {info.size} bytes, its part manifest says {entry.size}"
            if info.sha256 is not None and info.sha256 != entry.sha256:
                return f"{entry.name} has checksum {info.sha256}, its part manifest says {entry.sha256}"
        return None

    def _reject(self, step: int, problem: str) -> None:
        log_event("checkpoint_rejected", step=step, problem=problem)
        with self._cond:
            self._expected.pop(step, None)
            self._rejected.add(step)
            self._cond.notify_all()

    def _commit(self, step: int, files: list[FileEntry], metric: tuple[str, float] | None) -> None:
        evaluation = {"metric": metric[0], "value": metric[1]} if metric else None
        manifest = CheckpointManifest(step=step, world_size=self.world_size, run_id=self.run_id,
                                      committed_at=format_timestamp(utc_now()), files=tuple(files),
                                      config=self.config, evaluation=evaluation)
        self._metrics[step] = metric
        self.store.put_bytes(f"{step_folder(step)}/{MANIFEST}", manifest.to_json())
        kept = self._apply_retention()  # never fails the commit: the next commit retries it
        uri = self.store.uri.rstrip("/") + f"/{step_folder(step)}/"
        commit = Commit(step, uri, manifest.committed_at, kept, manifest.total_bytes)
        log_event("checkpoint_committed", step=step, uri=uri, files=len(files), bytes=manifest.total_bytes,
                  committed=kept)
        with self._cond:
            self.committed.append(step)
            self._cond.notify_all()
        if self.on_commit is not None:
            self.on_commit(commit)

    def _best_committed(self, committed: list[int]) -> int | None:
        """The committed step with the best evaluation metric (from its manifest), if any has one."""
        best: tuple[int, float] | None = None
        metric_name = None
        for step in committed:
            if step not in self._metrics:  # committed by an earlier attempt: its manifest says
                data = self.store.get_bytes(f"{step_folder(step)}/{MANIFEST}")
                evaluation = CheckpointManifest.from_json(data).evaluation if data else None
                self._metrics[step] = (evaluation["metric"], evaluation["value"]) if evaluation else None
            metric = self._metrics[step]
            if metric is None:
                continue
            metric_name = metric_name or metric[0]
            if metric[0] == metric_name and improves(metric[0], metric[1], best[1] if best else None):
                best = (step, metric[1])
        return best[0] if best else None

    def _apply_retention(self) -> int:
        """Delete what retention allows; returns how many committed checkpoints remain."""
        found = None
        try:
            found = listing(self.store.list(""))
            old, abandoned = retention_plan(found, self.keep_last, self._best_committed(found.committed))
            for step in old:
                folder = step_folder(step)
                self.store.delete([f"{folder}/{MANIFEST}"])  # un-commit first
                self.store.delete(k for k in found.keys[step] if k != f"{folder}/{MANIFEST}")
            for step in abandoned:
                self.store.delete(found.keys[step])
            if old or abandoned:
                log_event("checkpoint_retention", deleted=old, abandoned=abandoned, keep_last=self.keep_last)
            return len(found.committed) - len(old)
        except (StorageError, StorageUnavailable) as e:  # the next commit tries again
            log_event("checkpoint_retention_failed", error=str(e))
            return len(found.committed) if found else len(self.committed) + 1
