"""What the end-to-end tests share: the operator as users install it (the chart, default values)
and a namespace holding the S3 Secret their jobs name."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import S3_SECRET, Jobs

from kubetune_testbed.chart import OperatorRelease
from kubetune_testbed.datasets import write_chat_dataset
from kubetune_testbed.s3folders import delete_prefix, upload_folder


@pytest.fixture(scope="module")
def release_values() -> tuple[str, ...]:
    """The chart values (`--set` arguments) of the module's release: none, the defaults."""
    return ()


@pytest.fixture(scope="module")
def release(cluster: Any, crd: None, release_values: tuple[str, ...]) -> Iterator[OperatorRelease]:
    """The operator, installed with the chart's default values and `release_values` (`helm install
    --wait`); uninstalled after the module (its replicas act on every namespace: they must not
    outlive these tests)."""
    rel = OperatorRelease(cluster.local, namespace=f"kubetune-e2e-{secrets.token_hex(3)}")
    rel.install(*release_values)
    yield rel
    rel.uninstall()
    cluster.kubectl("delete", "namespace", rel.namespace, "--wait=false")


@pytest.fixture
def e2e(cluster: Any, namespace: str, release: OperatorRelease) -> Jobs:
    """Jobs in a fresh namespace holding the S3 Secret the quick start names (endpoint included)."""
    env = cluster.env
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": S3_SECRET},
              "stringData": {"AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                             "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
                             "AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"]}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(secret))
    return Jobs(cluster, namespace)


@pytest.fixture(scope="module")
def store(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bucket holding the tiny model and the chat data set; its name."""
    from kubetune_testbed.models import ensure_tiny

    s3 = cluster.s3_client()
    bucket = f"e2e-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    upload_folder(s3, Path(ensure_tiny()), bucket, "models/tiny/")
    upload_folder(s3, write_chat_dataset(tmp_path_factory.mktemp("data"))[0].parent, bucket, "data/")
    yield bucket
    delete_prefix(s3, bucket)
    s3.delete_bucket(Bucket=bucket)
