"""What the end-to-end tests share: the operator as users install it (the chart, default values)
and a namespace holding the S3 Secret their jobs name."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from harness import S3_SECRET, Jobs

from kubetune_testbed.chart import OperatorRelease


@pytest.fixture(scope="module")
def release(cluster: Any, crd: None) -> Iterator[OperatorRelease]:
    """The operator, installed with the chart's default values (`helm install --wait`); uninstalled
    after the module (its replicas act on every namespace: they must not outlive these tests)."""
    rel = OperatorRelease(cluster.local, namespace=f"kubetune-e2e-{secrets.token_hex(3)}")
    rel.install()
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
