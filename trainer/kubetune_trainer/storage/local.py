"""A mounted folder as a store: what pvc:// URIs name inside a worker pod.

Writes go to a temporary name beside the target and are renamed into place
once complete and synced, so a reader never sees half a file under its final
name, as with an S3 object.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from kubetune_api import parse_uri
from kubetune_trainer.errors import StorageError, StorageUnavailable
from kubetune_trainer.storage.retry import classify
from kubetune_trainer.storage.store import ObjectInfo, Upload

_PARTIAL = ".kubetune-partial-"  # a file being written; renamed to its name once complete


class FsStore:
    """A local (or mounted) folder; writes go to a temporary name and are renamed into place."""

    def __init__(self, root: str | Path, uri: str | None = None) -> None:
        self.root = Path(root)
        self.uri = uri or str(root)

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def _write(self, key: str, write: Callable[[Path], object]) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f"{_PARTIAL}{target.name}.", dir=target.parent)
            os.close(fd)
            try:
                write(Path(tmp))
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as e:
            raise classify(e, str(target)) from None

    def upload(self, uploads: Iterable[Upload]) -> dict[str, Exception]:
        failures: dict[str, Exception] = {}
        for u in uploads:
            try:
                self._write(u.key, lambda tmp, u=u: shutil.copyfile(u.path, tmp))  # type: ignore[misc]
            except (StorageError, StorageUnavailable) as e:
                failures[u.key] = e
        return failures

    def download(self, items: Sequence[tuple[str, Path]]) -> dict[str, Exception]:
        failures: dict[str, Exception] = {}
        for key, path in items:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self._path(key), path)
            except OSError as e:
                failures[key] = classify(e, str(self._path(key)))
        return failures

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda tmp: tmp.write_bytes(data))

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise classify(e, str(self._path(key))) from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            return ObjectInfo(self._path(key).stat().st_size, None)
        except FileNotFoundError:
            return None

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix.rstrip("/"))
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    def delete(self, keys: Iterable[str]) -> None:
        parents = set()
        for key in keys:
            path = self._path(key)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            parents.add(path.parent)
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            while parent != self.root and parent.is_relative_to(self.root):
                try:
                    parent.rmdir()  # only when empty
                except OSError:
                    break
                parent = parent.parent

    def abort_incomplete_uploads(self) -> int:
        """Temporary files of copies a killed process never finished."""
        leftovers = [p for p in self.root.rglob(f"{_PARTIAL}*") if p.is_file()] if self.root.is_dir() else []
        self.delete(str(p.relative_to(self.root)) for p in leftovers)  # and folders left empty
        return len(leftovers)

    def check_access(self) -> None:
        """The folder exists or can be created, and is writable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise classify(e, self.uri) from None
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.uri}: the folder is not writable by this user")

    def close(self) -> None:
        pass


def mounted_path(uri: str, pvc_root: str) -> str:
    """Where the folder or file of a pvc:// URI is mounted in this pod (below `pvc_root`)."""
    return parse_uri(uri).local_path(pvc_root)
