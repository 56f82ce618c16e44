"""Where models, data, checkpoints and the result live: an S3 bucket prefix or a mounted folder.

One small interface (`store.Store`) over two backends, so that the checkpoint
protocol, model staging and the output upload are written once:

- `s3.S3Store`: an s3://bucket/prefix/ through boto3 and s3transfer;
- `local.FsStore`: a mounted folder (a pvc:// URI); files appear under their
  final name only once complete.

Keys are relative to the store's root (the URI's prefix). Failures are sorted
into `StorageError` (the store said no: credentials, bucket, permissions;
retrying will not help) and `StorageUnavailable` (no answer; `retry` keeps
trying with backoff until a deadline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kubetune_api import StorageSpec
from kubetune_trainer.errors import StorageError
from kubetune_trainer.settings import Settings
from kubetune_trainer.storage.local import FsStore, mounted_path
from kubetune_trainer.storage.retry import raise_first_failure, retry
from kubetune_trainer.storage.s3 import S3Store, s3_client
from kubetune_trainer.storage.store import ObjectInfo, Store, Upload, child_key, file_sha256

__all__ = [
    "FsStore",
    "ObjectInfo",
    "S3Store",
    "Store",
    "Upload",
    "child_key",
    "download_all",
    "file_sha256",
    "mounted_path",
    "open_store",
    "raise_first_failure",
    "retry",
    "s3_client",
    "upload_all",
]


def open_store(uri: str, storage: StorageSpec, settings: Settings) -> Store:
    """The store for a checkpoint or output location: s3:// or pvc://."""
    if uri.startswith("s3://"):
        return S3Store(uri, s3_client(storage, max_connections=settings.upload_concurrency * 2), settings)
    if uri.startswith("pvc://"):
        return FsStore(mounted_path(uri, settings.pvc_root), uri)
    raise StorageError(f"{uri}: only s3:// and pvc:// locations can be written to")


def upload_all(store: Store, uploads: Sequence[Upload], *, what: str, give_up_after: float) -> None:
    """Store every file, retrying the ones that failed (retry's rules) until all are stored."""
    remaining = list(uploads)

    def upload_remaining() -> None:
        nonlocal remaining
        failures = store.upload(remaining)
        remaining = [u for u in remaining if u.key in failures]
        raise_first_failure(failures)

    retry(upload_remaining, what=what, give_up_after=give_up_after)


def download_all(store: Store, items: Sequence[tuple[str, Path]], *, what: str, give_up_after: float) -> None:
    """Fetch every (key, local path), retrying the ones that failed (retry's rules) until all are fetched."""
    remaining = list(items)

    def download_remaining() -> None:
        nonlocal remaining
        failures = store.download(remaining)
        remaining = [item for item in remaining if item[0] in failures]
        raise_first_failure(failures)

    retry(download_remaining, what=what, give_up_after=give_up_after)
