"""Folders in S3: upload a local folder, download or delete a prefix.

The demo and the tests move whole models, data sets and checkpoints between the
machine and the local cluster's MinIO; these are the few boto3 loops they share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key below s3://bucket/prefix, sorted."""
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [o["Key"] for o in page.get("Contents", [])]
    return sorted(found)


def upload_folder(s3: Any, folder: Path, bucket: str, prefix: str) -> int:
    """Upload every file below `folder` to s3://bucket/prefix, skipping files already there with
    the same size; returns the bytes uploaded."""
    prefix = prefix.rstrip("/") + "/"
    existing = {o["Key"]: o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for o in page.get("Contents", [])}
    sent = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = prefix + path.relative_to(folder).as_posix()
        if existing.get(key) != path.stat().st_size:
            s3.upload_file(str(path), bucket, key)
            sent += path.stat().st_size
    return sent


def download_prefix(s3: Any, bucket: str, prefix: str, into: Path) -> list[str]:
    """Download every object below s3://bucket/prefix into `into`; returns the keys relative to prefix."""
    names = []
    for key in keys(s3, bucket, prefix):
        name = key[len(prefix):].lstrip("/")
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
        names.append(name)
    return names


def delete_prefix(s3: Any, bucket: str, prefix: str = "") -> None:
    """Delete every object below s3://bucket/prefix (the whole bucket's content by default)."""
    found = keys(s3, bucket, prefix)
    for start in range(0, len(found), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in found[start:start + 1000]]})
