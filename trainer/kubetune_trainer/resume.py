"""Finding and fetching the checkpoint a run resumes from: the newest committed one.

Only folders with a manifest.json count; the others are uploads a killed run
never finished, and rank 0 deletes them before training starts (nothing is
uploading then: the whole gang restarts together). Each rank then downloads
just the files it loads, checked against the manifest's sizes and checksums.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from kubetune_trainer.errors import ConfigError
from kubetune_trainer.logs import log_event
from kubetune_trainer.manifest import (
    MANIFEST,
    CheckpointManifest,
    files_for_rank,
    listing,
    step_folder,
)
from kubetune_trainer.storage import Store, download_all, file_sha256


@dataclass(frozen=True)
class ResumePoint:
    """A committed checkpoint, downloaded for this rank."""

    step: int
    folder: Path
    """Local folder holding this rank's files (DeepSpeed's load_dir/tag)."""
    manifest: CheckpointManifest


def remove_uncommitted(store: Store) -> list[int]:
    """Delete every step folder without a manifest, and half-done uploads (call on rank 0 only,
    before training); returns the steps removed."""
    found = listing(store.list(""))
    for step in found.uncommitted:
        store.delete(found.keys[step])
    aborted = store.abort_incomplete_uploads()
    if found.uncommitted or aborted:
        log_event("checkpoint_cleanup", removed_uncommitted=found.uncommitted, aborted_uploads=aborted)
    return found.uncommitted


def newest_committed(store: Store) -> CheckpointManifest | None:
    """The manifest of the newest committed checkpoint, or None when there is none."""
    for step in reversed(listing(store.list("")).committed):
        data = store.get_bytes(f"{step_folder(step)}/{MANIFEST}")
        if data is None:  # deleted by retention meanwhile
            continue
        try:
            return CheckpointManifest.from_json(data)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{store.uri.rstrip('/')}/{step_folder(step)}/{MANIFEST}: not a kubetune "
                              f"checkpoint manifest ({e}); remove that folder or use another checkpoint.uri") from None
    return None


def download_checkpoint(store: Store, manifest: CheckpointManifest, *, rank: int, world_size: int,
                        into: Path, give_up_after: float) -> ResumePoint:
    """Download the files `rank` needs from a committed checkpoint into `into`/step-XXXXXXXX/."""
    where = f"{store.uri.rstrip('/')}/{step_folder(manifest.step)}/"
    if manifest.world_size != world_size:
        raise ConfigError(f"{where} was written by a world of {manifest.world_size} processes, this run has {world_size}; "
                          "ZeRO cannot re-partition its state: restore spec.resources, or use a new "
                          "checkpoint.uri to start over")
    folder = into / step_folder(manifest.step)
    shutil.rmtree(folder, ignore_errors=True)
    wanted = files_for_rank(manifest, rank)
    download_all(store, [(f"{step_folder(manifest.step)}/{f.name}", folder / f.name) for f in wanted],
                 what=f"downloading {where}", give_up_after=give_up_after)
    for entry in wanted:
        path = folder / entry.name
        if path.stat().st_size != entry.size or file_sha256(path) != entry.sha256:
            raise ConfigError(f"{where}{entry.name} does not match its manifest (size or SHA-256); the "
                              "checkpoint is corrupt: delete its manifest.json to resume from an older one")
    return ResumePoint(manifest.step, folder, manifest)
