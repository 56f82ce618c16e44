"""What the end-to-end tests share: a namespace holding the S3 Secret their jobs name."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import S3_SECRET, Jobs


@pytest.fixture
def e2e(cluster: Any, namespace: str, operator: Any) -> Jobs:
    """Jobs in a fresh namespace holding the S3 Secret the quick start names (endpoint included)."""
    env = cluster.env
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": S3_SECRET},
              "stringData": {"AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                             "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
                             "AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"]}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(secret))
    return Jobs(cluster, namespace)


