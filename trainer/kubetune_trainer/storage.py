"""Where models, data, checkpoints and the result live: an S3 bucket prefix or a local folder.

One small interface (`Store`) over two backends, so that the checkpoint
protocol, model staging and the output upload are written once:

- `s3.S3Store`: an s3://bucket/prefix/ through boto3 and s3transfer;
- `FsStore`: a mounted folder (pvc:// URIs, or a plain path in a developer
  config); files appear under their final name only once complete.

Keys are relative to the store's root (the URI's prefix). Failures are sorted
into `StorageError` (the store said no: credentials, bucket, permissions; retrying
will not help) and `StorageUnavailable` (no answer; `retry` keeps trying with
backoff until a deadline).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from kubetune_api import parse_uri
from kubetune_trainer.config import StorageConfig
from kubetune_trainer.errors import StorageError, StorageUnavailable
from kubetune_trainer.settings import MB, Settings

SHA256_METADATA = "sha256"
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about a stored file."""

    size: int
    sha256: str | None
    """The SHA-256 the uploader recorded with the object (S3 metadata); None where the store keeps none."""


@dataclass(frozen=True)
class Upload:
    """A local file to store under `key`, with its checksum."""

    path: Path
    key: str
    sha256: str


class Store(Protocol):
    """Files under one root: an s3://bucket/prefix/ or a local folder."""

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


# --------------------------------------------------------------------------- errors and retries

_CREDENTIAL_HINTS = {
    "InvalidAccessKeyId": "the store does not know the access key; check AWS_ACCESS_KEY_ID in the "
                          "Secret named by spec.storage.credentialsSecret",
    "SignatureDoesNotMatch": "the secret key does not match the access key; check "
                             "AWS_SECRET_ACCESS_KEY in the Secret named by spec.storage.credentialsSecret",
    "InvalidToken": "the session token is invalid; check AWS_SESSION_TOKEN",
    "ExpiredToken": "the session token has expired; renew the credentials",
    "AccessDenied": "the credentials are not allowed to do this here; grant them read, write, list "
                    "and delete on this prefix",
    "NoSuchBucket": "the bucket does not exist; create it or fix the URI",
    "AllAccessDisabled": "all access to this bucket is disabled",
}
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError",
                    "ServiceUnavailable", "Throttling", "ThrottlingException", "XMinioServerNotInitialized",
                    "XMinioStorageFull", "OperationAborted", "503", "500", "502", "504"}


def classify(error: BaseException, where: str) -> Exception:
    """A botocore/s3transfer/OS error as StorageError (final) or StorageUnavailable (retry)."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(error, StorageError | StorageUnavailable):
        return error
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return StorageError(f"{where}: no S3 credentials; set spec.storage.credentialsSecret (or "
                            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) or give the pods ambient credentials")
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _CREDENTIAL_HINTS:
            return StorageError(f"{where}: S3 refused the request ({code}): {_CREDENTIAL_HINTS[code]}")
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return StorageUnavailable(f"{where}: S3 is unavailable ({code or status})")
        if status == 403:
            return StorageError(f"{where}: S3 refused the request (403 {code}): {_CREDENTIAL_HINTS['AccessDenied']}")
        return StorageError(f"{where}: S3 refused the request ({code or status}: "
                            f"{error.response.get('Error', {}).get('Message', '')})")
    if isinstance(error, PermissionError):
        return StorageError(f"{where}: permission denied ({error.strerror}); the pod's user must be "
                            "able to read and write this folder")
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageUnavailable(f"{where}: no space left on the device")
    first_line = (str(error).splitlines() or [""])[0]
    return StorageUnavailable(f"{where}: {type(error).__name__}: {first_line}")


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: about base * 2**attempt, at most `cap` seconds."""
    return min(cap, base * 2**attempt) * random.uniform(0.5, 1.0)


def raise_first_failure(failures: dict[str, Exception]) -> None:
    """Raise a final failure if there is one, else a transient one (which `retry` retries)."""
    for error in failures.values():
        if not isinstance(error, StorageUnavailable):
            raise error
    if failures:
        first = next(iter(failures.values()))
        raise StorageUnavailable(f"{len(failures)} file(s) not transferred, e.g. {first}")


class Cancelled(Exception):
    """The work was abandoned because its owner is shutting down."""


def retry(call: Callable[[], T], *, what: str, give_up_after: float,
          on_retry: Callable[[int, Exception, float], None] | None = None,
          stop: threading.Event | None = None) -> T:
    """`call()` until it succeeds; StorageUnavailable is retried with backoff for `give_up_after`
    seconds, anything else is raised at once."""
    attempt, deadline = 0, None
    while True:
        try:
            return call()
        except StorageUnavailable as e:
            now = time.monotonic()
            deadline = deadline or now + give_up_after
            if now >= deadline:
                raise StorageUnavailable(f"{what}: gave up after {give_up_after:.0f}s of failures; "
                                         f"last: {e}") from None
            delay = min(backoff_delay(attempt), max(0.0, deadline - now))
            if on_retry is not None:
                on_retry(attempt + 1, e, delay)
            if stop is not None and stop.wait(delay):
                raise Cancelled(what) from None
            if stop is None:
                time.sleep(delay)
            attempt += 1


# --------------------------------------------------------------------------- local folders


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


def local_path(uri: str, pvc_root: str) -> str | None:
    """The local path a pvc:// URI or a plain path names; None for s3:// and hf:// URIs."""
    if uri.startswith("pvc://"):
        return parse_uri(uri).local_path(pvc_root)
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    if "://" in uri:
        return None
    return uri


def open_store(uri: str, storage: StorageConfig, settings: Settings) -> Store:
    """The store for a checkpoint or output location: s3://, pvc:// or a local path."""
    if uri.startswith("s3://"):
        from kubetune_trainer.s3 import S3Store, s3_client

        return S3Store(uri, s3_client(storage, max_connections=settings.upload_concurrency * 2), settings)
    path = local_path(uri, settings.pvc_root)
    if path is None:
        raise StorageError(f"{uri}: only s3:// and pvc:// locations can be written to")
    return FsStore(path, uri)
