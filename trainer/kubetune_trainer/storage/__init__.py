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
    "file_sha256",
    "mounted_path",
    "open_store",
    "raise_first_failure",
    "retry",
    "s3_client",
]


def open_store(uri: str, storage: StorageSpec, settings: Settings) -> Store:
    """The store for a checkpoint or output location: s3:// or pvc://."""
    if uri.startswith("s3://"):
        return S3Store(uri, s3_client(storage, max_connections=settings.upload_concurrency * 2), settings)
    if uri.startswith("pvc://"):
        return FsStore(mounted_path(uri, settings.pvc_root), uri)
    raise StorageError(f"{uri}: only s3:// and pvc:// locations can be written to")
