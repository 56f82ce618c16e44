"""The fault proxy in front of the local cluster's MinIO fails S3 requests the way each mode says."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectionError,
    EndpointConnectionError,
)

from kubetune_testbed.faultproxy import FaultProxy

pytestmark = pytest.mark.cluster


@pytest.fixture
def proxy(cluster: Any) -> Iterator[FaultProxy]:
    local = cluster.local
    fp = FaultProxy(local.host_ip, (local.host_ip, local.state.ports["minio"]), seed=1).start()
    yield fp
    fp.stop()


@pytest.fixture
def s3_via(cluster: Any, proxy: FaultProxy) -> Any:
    """An S3 client through the proxy that does not retry, so each request shows the fault."""
    env = cluster.local.env()
    return boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1",
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=10))


def test_pass_forwards_byte_for_byte(s3_via: Any, bucket: str) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    s3_via.put_object(Bucket=bucket, Key="k", Body=data)
    assert s3_via.get_object(Bucket=bucket, Key="k")["Body"].read() == data


def test_error_mode_answers_503_slow_down(s3_via: Any, bucket: str, proxy: FaultProxy) -> None:
    proxy.set_mode("error", ratio=1.0)
    with pytest.raises(ClientError) as e:
        s3_via.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert e.value.response["Error"]["Code"] == "SlowDown"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    proxy.set_mode("pass")
    s3_via.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert proxy.stats.errors >= 1


def test_outage_resets_connections_until_it_ends(s3_via: Any, bucket: str, proxy: FaultProxy) -> None:
    proxy.set_mode("outage")
    with pytest.raises((EndpointConnectionError, ConnectionClosedError, ConnectionError)):
        s3_via.list_objects_v2(Bucket=bucket)
    proxy.set_mode("pass")
    assert s3_via.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_drop_cuts_a_reply_part_way(s3: Any, s3_via: Any, bucket: str, proxy: FaultProxy) -> None:
    s3.put_object(Bucket=bucket, Key="big", Body=os.urandom(2 * 1024 * 1024))
    proxy.set_mode("drop", ratio=1.0)
    with pytest.raises(Exception) as e:  # botocore raises where the cut falls: in the headers or the body
        s3_via.get_object(Bucket=bucket, Key="big")["Body"].read()
    assert proxy.stats.dropped >= 1, e.value


def test_slow_mode_delays_every_request(s3_via: Any, bucket: str, proxy: FaultProxy) -> None:
    proxy.set_mode("slow", latency=0.5)
    started = time.monotonic()
    s3_via.list_objects_v2(Bucket=bucket)
    assert time.monotonic() - started >= 1.0  # the request and the reply each wait
