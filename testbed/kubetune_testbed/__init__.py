"""kubetune's test bed: the local cluster that the tests, the demo and the benchmarks stand on.

Not part of the product: it is its own distribution (`kubetune-testbed`,
testbed/pyproject.toml), installed into the development environment only
(`make venv`), never into the images.

    cluster.py    LocalCluster: up, down, status, and attach() to the one that runs
    __main__.py   python -m kubetune_testbed up|down|status (make up/down/status)
    binaries.py   the pinned versions (hack/versions.env) and the built binaries
    pki.py        the cluster's CA, certificates, service-account key, kubeconfigs
    state.py      what `up` started (<run>/state.json), stopped by pid
    nodes.py      kwok's fake GPU nodes and the node agent's node
    ports.py      free loopback ports
    nodeagent/    the kubelet stand-in whose pods run as local processes
    s3folders.py  folders to and from S3
    models.py     the offline models (python -m kubetune_testbed.models)
    datasets.py   the chat data set (python -m kubetune_testbed.datasets)
    quickstart.py examples/quickstart.yaml and where it reads and writes
    chart.py      the operator installed with the Helm chart, as a user installs it
    faultproxy.py a TCP proxy in front of MinIO that fails on command (outage, slowness, 5xx, drops)
    chaos/        the fault-injection suite (python -m kubetune_testbed.chaos, make chaos)
    repository.py the repository root, found from this package
"""

from __future__ import annotations

from .cluster import ClusterError, LocalCluster, attach, default_run_dir
from .repository import REPO

__all__ = ["REPO", "ClusterError", "LocalCluster", "attach", "default_run_dir"]
