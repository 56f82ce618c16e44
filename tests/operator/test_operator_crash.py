"""The operator may die at any moment; the world must still converge.

Twenty jobs are created and their workers deleted at random while the
operator is SIGKILLed at random points, ten times over. In the end every job
is Running with exactly its own workers (no duplicates, no orphans) and its
restart count matches what was done to it.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from typing import Any

import pytest
from harness import Jobs, OperatorProcess, ftj, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

JOBS = 20
ROUNDS = 10


def test_sigkilled_operator_converges_without_duplicates_or_orphans(cluster, crd, namespace, tmp_path) -> None:
    rng = random.Random(20261121)
    jobs = Jobs(cluster, namespace)
    op = OperatorProcess(cluster.env, tmp_path / "operator.log")
    names = [f"crash-{i:02d}" for i in range(JOBS)]
    deleted: Counter[str] = Counter()

    op.start()
    for name in names:  # created while the operator is running...
        jobs.apply(ftj(name, nodes=2, gpus=0, runPolicy={"backoffLimit": 0}))
        if name == names[JOBS // 2]:
            op.kill()  # ...and while it is not
    for _ in range(ROUNDS):
        if op.proc is None or op.proc.poll() is not None:
            op.start()
        time.sleep(rng.uniform(0.0, 1.5))
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        for victim in rng.sample(live, k=min(3, len(live))):
            job = victim["metadata"]["labels"]["kubetune.io/job-name"]
            cluster.kubectl("delete", "pod", victim["metadata"]["name"], "-n", namespace, "--wait=false", check=False)
            deleted[job] += 1
        time.sleep(rng.uniform(0.0, 1.5))
        op.kill()

    op.start()
    try:
        def converged() -> bool:
            return all(_settled(jobs, name) for name in names)

        wait_for(converged, timeout=180, interval=1, what="every job Running on its own workers")
    finally:
        op.kill()

    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    by_job = Counter(p["metadata"]["labels"]["kubetune.io/job-name"] for p in pods)
    assert by_job == dict.fromkeys(names, 2), "exactly two workers per job"
    assert all(p["metadata"]["ownerReferences"][0]["name"] == p["metadata"]["labels"]["kubetune.io/job-name"]
               for p in pods), "every pod is owned by its job"
    for name in names:
        status = jobs.status(name)
        assert status["restarts"]["application"] == 0
        infra = status["restarts"]["infrastructure"]
        # Deleting both workers of one gang, or a worker of a gang already restarting, is one restart.
        assert (infra == 0) if not deleted[name] else (1 <= infra <= deleted[name]), (name, infra, deleted[name])
        assert status["observedGeneration"] == 1


def _settled(jobs: Jobs, name: str) -> bool:
    status: dict[str, Any] = jobs.status(name)
    pods = jobs.pods(name)
    attempt = 1 + sum((status.get("restarts") or {}).values())
    return (status.get("phase") == "Running" and len(pods) == 2
            and all(p["metadata"]["labels"]["kubetune.io/attempt"] == str(attempt) for p in pods)
            and all(p["status"].get("phase") == "Running" for p in pods))
