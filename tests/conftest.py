"""Fixtures every test tier shares: the real local cluster, fresh namespaces, fresh buckets.

The `cluster` fixture reuses a cluster started with `make up` when one is
healthy; otherwise it starts one for the session and stops it at the end, so
`make test` needs nothing running beforehand.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import CLUSTER_MANIFESTS, Jobs, Kueue, OperatorProcess

from kubetune_testbed import LocalCluster, attach, default_run_dir
from kubetune_testbed.chart import installed_operators_paused


@dataclass
class ClusterHandle:
    """What a test needs to talk to the local cluster."""

    local: LocalCluster

    @property
    def kubeconfig(self) -> Path:
        return self.local.admin_kubeconfig

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus the cluster's client settings (KUBECONFIG, AWS_*, kubectl/helm on PATH)."""
        env = {**os.environ, **self.local.env()}
        env["PATH"] = env.pop("KUBETUNE_LOCAL_PATH") + os.pathsep + os.environ.get("PATH", "")
        return env

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the cluster's kubectl as the admin user; raise with its stderr when `check` and it fails."""
        result = subprocess.run(
            [str(self.local.bins.kube("kubectl")), *args],
            input=input, capture_output=True, text=True, env=self.env, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient authenticated as the admin user."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def s3_client(self) -> Any:
        import boto3

        env = self.local.env()
        return boto3.client(
            "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterHandle]:
    running = attach()
    if running is not None:
        # The tests run their own operators; one installed in the cluster (`make demo` leaves its
        # Helm release running) is scaled to 0 for the session and back afterwards.
        with installed_operators_paused(running):
            yield ClusterHandle(running)  # started by `make up`: leave it running
        return
    local = LocalCluster(default_run_dir())
    local.up()
    try:
        yield ClusterHandle(local)
    finally:
        local.down()


def _dns_label(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-")


@pytest.fixture
def namespace(cluster: ClusterHandle, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = f"t-{_dns_label(request.node.name, 40)}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    # Pods are only admitted once the namespace's `default` ServiceAccount exists.
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"namespace {name}: no default ServiceAccount after 30s"
        time.sleep(0.2)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def s3(cluster: ClusterHandle) -> Any:
    """A boto3 S3 client for the local MinIO."""
    return cluster.s3_client()


@pytest.fixture
def bucket(s3: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty bucket per test, emptied and removed afterwards."""
    name = f"t-{_dns_label(request.node.name, 40)}-{secrets.token_hex(3)}"
    s3.create_bucket(Bucket=name)
    yield name
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=name, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def crd(cluster: ClusterHandle) -> None:
    """The FineTuneJob CRD installed and Established, and the admission policy that keeps each worker to its own
    job's status (the chart installs both): all the operator needs of a cluster."""
    for path in CLUSTER_MANIFESTS:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    names = [n for n in cluster.kubectl("get", "crd", "-o", "name").stdout.split() if "kubetune.io" in n]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


@pytest.fixture(scope="module")
def operator(cluster: ClusterHandle, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """A real `python -m kubetune_operator` process against the local cluster, for one test module."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(cluster.env, log)
    op.start()
    yield op
    op.kill(signal.SIGTERM)
    print(f"operator log: {log}")


@pytest.fixture
def kueue(cluster: ClusterHandle, namespace: str) -> Iterator[Kueue]:
    """Kueue's objects for one test (queues, flavors, priority classes), deleted afterwards."""
    k = Kueue(cluster, namespace)
    yield k
    k.delete()


@pytest.fixture
def jobs(cluster: ClusterHandle, namespace: str) -> Jobs:
    return Jobs(cluster, namespace)
