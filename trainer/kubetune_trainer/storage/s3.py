"""The S3 backend: an s3://bucket/prefix/ as a `Store` (store.py).

boto3 with s3transfer's TransferManager: multipart above a chunk size, many
files and parts in flight at once, an optional bandwidth cap, request retries
in botocore and longer outages in the callers' backoff loops. The endpoint,
region and addressing style come from spec.storage (AWS_ENDPOINT_URL wins, as
the operator sets it); the credentials come from the environment (the operator
passes the Secret as AWS_* variables) and are never logged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kubetune_api import StorageSpec, parse_uri
from kubetune_trainer.errors import StorageError, StorageUnavailable
from kubetune_trainer.settings import Settings
from kubetune_trainer.storage.retry import classify as classify_os_error
from kubetune_trainer.storage.store import ObjectInfo, Upload, child_key

T = TypeVar("T")

# The object metadata key under which the uploader records a file's SHA-256.
SHA256_METADATA = "sha256"

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
    """A botocore/s3transfer (or OS) error as StorageError (final) or StorageUnavailable (retry)."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

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
    return classify_os_error(error, where)


def s3_client(storage: StorageSpec, *, max_connections: int = 16) -> Any:
    """A boto3 S3 client; credentials from the environment (never from the spec, never logged)."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=storage.region,
        s3={"addressing_style": storage.addressing_style},
        # A few quick retries per request; longer outages are the callers' backoff loops.
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=max_connections,
    )
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or storage.endpoint
    return boto3.session.Session().client("s3", endpoint_url=endpoint or None, config=config)


class S3Store:
    """A prefix of an S3 bucket."""

    def __init__(self, uri: str, client: Any, settings: Settings) -> None:
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        location = parse_uri(uri)
        if location.scheme != "s3":
            raise ValueError(f"not an s3:// URI: {uri}")
        self.uri = uri
        self.bucket = location.location
        self.root = location.path.strip("/")
        self.client = client
        self.transfer_config = TransferConfig(
            multipart_threshold=settings.upload_chunk_bytes,
            multipart_chunksize=settings.upload_chunk_bytes,
            max_concurrency=settings.upload_concurrency,
            max_bandwidth=settings.upload_max_bandwidth,
            # The C runtime client would ignore the bandwidth cap and the chunk size.
            preferred_transfer_client="classic",
        )
        self._manager = create_transfer_manager(client, self.transfer_config)

    def _key(self, key: str) -> str:
        return child_key(self.root, key)

    def _where(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _call(self, key: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as e:
            raise classify(e, self._where(key)) from None

    def upload(self, uploads: Iterable[Upload]) -> dict[str, Exception]:
        futures = [(u.key, self._manager.upload(str(u.path), self.bucket, self._key(u.key),
                                                extra_args={"Metadata": {SHA256_METADATA: u.sha256}}))
                   for u in uploads]
        return self._wait(futures)

    def download(self, items: Sequence[tuple[str, Path]]) -> dict[str, Exception]:
        futures = []
        for key, path in items:
            path.parent.mkdir(parents=True, exist_ok=True)
            futures.append((key, self._manager.download(self.bucket, self._key(key), str(path))))
        return self._wait(futures)

    def _wait(self, futures: Sequence[tuple[str, Any]]) -> dict[str, Exception]:
        failures: dict[str, Exception] = {}
        for key, future in futures:
            try:
                future.result()
            except Exception as e:
                failures[key] = classify(e, self._where(key))
        return failures

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(response["Body"].read())
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise classify(e, self._where(key)) from None
        except Exception as e:
            raise classify(e, self._where(key)) from None

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise classify(e, self._where(key)) from None
        except Exception as e:
            raise classify(e, self._where(key)) from None
        return ObjectInfo(int(response["ContentLength"]), response.get("Metadata", {}).get(SHA256_METADATA),
                          str(response.get("ETag", "")).strip('"') or None)

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        if prefix.endswith("/") or not prefix:
            full = full + "/" if full else ""
        root = self.root + "/" if self.root else ""

        def pages() -> list[str]:
            keys = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys += [o["Key"][len(root):] for o in page.get("Contents", [])]
            return sorted(keys)

        return self._call(prefix, pages)

    def delete(self, keys: Iterable[str]) -> None:
        batch = [{"Key": self._key(k)} for k in keys]
        for start in range(0, len(batch), 1000):  # DeleteObjects takes at most 1000 keys
            chunk = batch[start:start + 1000]
            response = self._call("", lambda chunk=chunk: self.client.delete_objects(  # type: ignore[misc]
                Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True}))
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise classify(_client_error(first.get("Code", ""), first.get("Message", "")),
                               self._where(first.get("Key", "")))

    def abort_incomplete_uploads(self) -> int:
        """Abort multipart uploads left under the root by killed processes (their parts use space
        until aborted); returns how many. Call only when nothing is uploading."""
        prefix = self.root + "/" if self.root else ""

        def abort() -> int:
            count = 0
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                    count += 1
            return count

        return self._call("", abort)

    def check_access(self) -> None:
        """One cheap listing, so wrong credentials or a missing bucket fail before any work."""
        self._call("", lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.root, MaxKeys=1))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._manager.shutdown(cancel=True)


def _client_error(code: str, message: str) -> Exception:
    from botocore.exceptions import ClientError

    response: Any = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {}}
    return ClientError(response, "DeleteObjects")
