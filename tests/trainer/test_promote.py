"""`python -m kubetune_trainer.promote`, the copy a sweep's promotion pod makes, between two real
stores (mounted folders, the pvc:// store; tests/e2e/test_sweep.py runs it against MinIO)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer.errors import StorageError
from kubetune_trainer.promote import RESULT_FILE, promote
from kubetune_trainer.storage.local import FsStore


def test_the_model_is_copied_without_its_checkpoints_and_the_result_is_written_last(tmp_path: Path) -> None:
    source = tmp_path / "trial"
    (source / "checkpoints" / "step-4").mkdir(parents=True)
    (source / "checkpoints" / "step-4" / "state.pt").write_bytes(b"x" * 10)
    (source / "model.safetensors").write_bytes(b"weights" * 100)
    (source / "config.json").write_text("{}")
    target = tmp_path / "best"
    (target / "old-shard.bin").parent.mkdir(parents=True)
    (target / "old-shard.bin").write_bytes(b"stale")  # from an earlier promotion: replaced

    keys = promote(FsStore(source), FsStore(target), {"trial": "s-3", "value": 0.5}, exclude=("checkpoints/",))

    assert keys == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", RESULT_FILE]
    assert (target / "model.safetensors").read_bytes() == b"weights" * 100
    result = json.loads((target / RESULT_FILE).read_text())
    assert result == {"trial": "s-3", "value": 0.5, "files": ["config.json", "model.safetensors"]}
    written = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
    assert written[RESULT_FILE] >= max(written.values())


def test_a_trial_without_output_fails_with_the_folder_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(StorageError, match="no files to promote"):
        promote(FsStore(tmp_path / "empty", "pvc://claim/empty/"), FsStore(tmp_path / "best"), {})
    assert not (tmp_path / "best" / RESULT_FILE).exists()
