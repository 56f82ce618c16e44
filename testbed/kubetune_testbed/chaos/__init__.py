"""The fault-injection suite: real training jobs on the local cluster, and faults of many kinds at random.

`python -m kubetune_testbed.chaos` (`make chaos`) installs the operator with
the chart, keeps a few jobs of the tiny Llama training on the node agent's
pods with a checkpoint every few steps, and injects faults drawn from a seed:
SIGKILL of a trainer, SIGSTOP of a rank (a hang), deletion of a worker pod, S3
outages, slowness, 5xx replies and dropped connections (through a proxy in
front of MinIO, kubetune_testbed.faultproxy), SIGKILL of the operator's leader,
restarts of the API server and of the node agent. Then it checks what a user
trusts the system with and prints a table; its exit code says whether every
check held.

    faults.py     the kinds, the seeded schedule, the injector
    jobs.py       the jobs' manifest and the watcher that records every run of their trainers
    checks.py     checkpoints against their manifests, orphans, duplicates, secrets; the table
    processes.py  the pods' processes, found in /proc
    kube.py       API access that outlasts an API server restart
    suite.py      one run: setup, faults, drain, checks, cleanup
"""

from __future__ import annotations

from .checks import Report
from .faults import DEFAULT_KINDS, KINDS
from .suite import Options, Suite

__all__ = ["DEFAULT_KINDS", "KINDS", "Options", "Report", "Suite"]
