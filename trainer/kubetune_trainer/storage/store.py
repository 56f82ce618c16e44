"""The store interface: files under one root, whatever holds them.

What the checkpoint protocol, model staging and the output upload need from a
store, and the plain values they exchange with it. The backends are local.py
(a mounted folder) and s3.py (an S3 prefix).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kubetune_trainer.settings import MB


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about a stored file."""

    size: int
    sha256: str | None
    """The SHA-256 the uploader recorded with the object (S3 metadata); None where the store keeps none."""
    etag: str | None = None
    """The store's own content tag (S3's ETag); None where the store keeps none."""


@dataclass(frozen=True)
class Upload:
    """A local file to store under `key`, with its checksum."""

    path: Path
    key: str
    sha256: str


class Store(Protocol):
    """Files under one root: an s3://bucket/prefix/ or a mounted folder."""

    uri: str
    """The root, for messages: every key is below it."""

    def upload(self, uploads: Iterable[Upload]) -> dict[str, Exception]:
        """Store the files concurrently, each submitted as the iterable yields it; returns the
        failures by key (empty: all stored)."""
        ...

    def download(self, items: Sequence[tuple[str, Path]]) -> dict[str, Exception]:
        """Fetch (key, local path) pairs concurrently; returns the failures by key."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes | None:
        """The object's content; None when there is no such object."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """Size and recorded checksum; None when there is no such object."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Every key below `prefix` (recursively), sorted."""
        ...

    def delete(self, keys: Iterable[str]) -> None: ...

    def abort_incomplete_uploads(self) -> int:
        """Clean up uploads that a killed process left half done; returns how many."""
        ...

    def check_access(self) -> None:
        """Fail now (StorageError) when the store cannot be reached or used at all."""
        ...

    def close(self) -> None: ...


def file_sha256(path: Path, chunk: int = 8 * MB) -> str:
    """SHA-256 of a file, read in large chunks (hashlib releases the GIL on them)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def child_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))
