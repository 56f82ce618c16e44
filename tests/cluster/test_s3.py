"""MinIO is a real S3 endpoint: the operations the trainer relies on round-trip byte for byte."""

from __future__ import annotations

import hashlib
import os

import pytest
from boto3.s3.transfer import TransferConfig

pytestmark = pytest.mark.cluster


def test_put_get_list(s3, bucket) -> None:
    payloads = {f"ckpt/step-{i:08d}/part.bin": os.urandom(1000 + i) for i in range(3)}
    for key, data in payloads.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="ckpt/")
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(payloads)
    assert {o["Key"]: o["Size"] for o in listed["Contents"]} == {k: len(v) for k, v in payloads.items()}
    for key, data in payloads.items():
        got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


def test_multipart_upload_round_trip(s3, bucket, tmp_path) -> None:
    data = os.urandom(13 * 1024 * 1024 + 17)  # more than two 5 MiB parts, and a ragged tail
    src = tmp_path / "shard.pt"
    src.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024, max_concurrency=4)
    s3.upload_file(str(src), bucket, "big/shard.pt", Config=config)

    head = s3.head_object(Bucket=bucket, Key="big/shard.pt")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # really uploaded in three parts

    dst = tmp_path / "back.pt"
    s3.download_file(bucket, "big/shard.pt", str(dst), Config=config)
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
