"""Leader election on the local cluster: `python -m kubetune_operator` without flags, one replica or several.

The operator needs nothing of a cluster but the FineTuneJob CRD: its Lease is a core
coordination.k8s.io object. Of several replicas exactly one acts; a standby takes over when
the leader goes (at once when it stops cleanly, within the lease duration when it dies), and
a leader that finds the Lease taken stops acting at once. Jobs run on kwok's nodes.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import Jobs, OperatorProcess, ftj, wait_for

from kubetune_operator.leadership import micro_now
from kubetune_testbed.ports import free_port

pytestmark = pytest.mark.cluster


def running(jobs: Jobs, name: str, attempt: int = 1, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status, pods = jobs.status(name), jobs.pods(name)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        ok = (status.get("phase") == "Running" and (status.get("workers") or {}).get("attempt") == attempt
              and (status.get("workers") or {}).get("ready") == len(live) > 0
              and all(p["metadata"]["labels"]["kubetune.io/attempt"] == str(attempt) for p in live))
        return status if ok else None

    return dict(wait_for(check, timeout=timeout, what=f"{name} Running (attempt {attempt})", interval=0.1))


def lease(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "lease", name, "-n", namespace, "-o", "json", check=False)
    return dict(json.loads(out.stdout)["spec"]) if out.returncode == 0 else {}


def identity(op: OperatorProcess) -> str:
    found = re.search(r"standing by for the Lease \S+ as (\S+)", op.log.read_text())
    assert found, op.log.read_text()
    return found.group(1)


def leading(op: OperatorProcess) -> bool:
    return "kubetune_leader 1.0" in op.metrics()


def ready(op: OperatorProcess) -> int:
    port = op.env["KUBETUNE_HEALTH_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
        return int(r.status)


def replica(cluster: Any, log: Path, **settings: str) -> OperatorProcess:
    """`python -m kubetune_operator`, no flags; `settings` are KUBETUNE_* variables less the prefix."""
    env = {**cluster.env, "KUBETUNE_METRICS_PORT": str(free_port()), "KUBETUNE_HEALTH_PORT": str(free_port()),
           **{f"KUBETUNE_{k}": v for k, v in settings.items()}}
    return OperatorProcess(env, log, args=(), settings={})


def test_the_operator_without_flags_needs_only_the_crd_and_replaces_a_deleted_worker_within_5_s(
        cluster, crd, jobs: Jobs, tmp_path: Path) -> None:
    crds = cluster.kubectl("get", "crd", "-o", "name").stdout.split()
    assert not [c for c in crds if "kopf.dev" in c], "kopf's peering CRDs are not needed (nor installed)"
    op = replica(cluster, tmp_path / "operator.log").start()  # defaults: Lease default/kubetune-operator
    try:
        wait_for(lambda: lease(cluster, "default", "kubetune-operator").get("holderIdentity") == identity(op),
                 timeout=30, what="the operator to hold the Lease default/kubetune-operator")
        jobs.apply(ftj("solo", nodes=2, gpus=1))
        running(jobs, "solo")
        cluster.kubectl("delete", "pod", "solo-worker-1", "-n", jobs.ns, "--wait=false")
        deleted = time.monotonic()
        status = running(jobs, "solo", attempt=2, timeout=5)
        print(f"worker replaced {time.monotonic() - deleted:.1f} s after its deletion")
        assert status["restarts"] == {"infrastructure": 1, "application": 0, "hang": 0}
    finally:
        op.kill(signal.SIGTERM)
    log = op.log.read_text()
    assert f"{jobs.ns}/solo: Restarting" in log  # kubectl logs of its pod would say what it did
    assert lease(cluster, "default", "kubetune-operator")["holderIdentity"] == "", "released on SIGTERM"


def test_of_several_replicas_one_acts_and_a_standby_takes_over(cluster, crd, jobs: Jobs, tmp_path: Path) -> None:
    name = f"election-{secrets.token_hex(3)}"
    timings = {"LEASE_NAME": name, "LEASE_NAMESPACE": jobs.ns, "LEASE_DURATION_SECONDS": "6",
               "RENEW_DEADLINE_SECONDS": "4", "RETRY_PERIOD_SECONDS": "0.5", "RESYNC_SECONDS": "2"}
    a = replica(cluster, tmp_path / "a.log", **timings).start()
    wait_for(lambda: leading(a), timeout=30, what="a to lead")
    b = replica(cluster, tmp_path / "b.log", **timings).start()
    c = replica(cluster, tmp_path / "c.log", **timings)
    try:
        wait_for(lambda: "standing by: the Lease" in b.log.read_text(), what="b to stand by")
        assert not leading(b) and ready(b) == 200  # a standby is Ready: it can take over
        jobs.apply(ftj("gang", nodes=2, gpus=1))
        running(jobs, "gang")
        assert "Handler" not in b.log.read_text(), "a standby ran a handler"

        # A clean stop hands the Lease over at once (well within the lease duration).
        stopped = time.monotonic()
        a.kill(signal.SIGTERM)
        wait_for(lambda: leading(b), timeout=6, what="b to take over from a stopped leader", interval=0.1)
        print(f"takeover after a clean stop: {time.monotonic() - stopped:.1f} s")
        transitions = lease(cluster, jobs.ns, name)["leaseTransitions"]
        cluster.kubectl("delete", "pod", "gang-worker-0", "-n", jobs.ns, "--wait=false")
        running(jobs, "gang", attempt=2)

        # A leader that dies holds the Lease until its term runs out; then the standby takes it.
        c.start()
        wait_for(lambda: "standing by: the Lease" in c.log.read_text(), what="c to stand by")
        b.kill(signal.SIGKILL)
        died = time.monotonic()
        wait_for(lambda: leading(c), timeout=6 + 3, what="c to take over from a dead leader", interval=0.1)
        print(f"takeover after a SIGKILL: {time.monotonic() - died:.1f} s (lease duration 6 s)")
        assert lease(cluster, jobs.ns, name)["leaseTransitions"] == transitions + 1
        assert jobs.status("gang")["restarts"] == {"infrastructure": 1, "application": 0, "hang": 0}

        # Someone else holds the Lease now: the leader exits at once, before acting again.
        now = micro_now()
        cluster.kubectl("patch", "lease", name, "-n", jobs.ns, "--type=merge", "-p", json.dumps(
            {"spec": {"holderIdentity": "intruder", "renewTime": now, "acquireTime": now}}))
        assert c.proc is not None
        assert c.proc.wait(timeout=5) == 1
        assert "leadership lost: the Lease" in c.log.read_text() and "is held by intruder now" in c.log.read_text()
    finally:
        for op in (a, b, c):
            op.kill(signal.SIGTERM)
    assert jobs.status("gang")["restarts"] == {"infrastructure": 1, "application": 0, "hang": 0}
    assert [p["metadata"]["labels"]["kubetune.io/attempt"] for p in jobs.pods("gang")] == ["2", "2"]
