"""One reconcile pass against the real API server: what is written, and how often.

The operator's `Reconciler` (what the kopf handlers and the resync loop call)
against the local cluster's kube-apiserver, with kwok's fake GPU nodes running
the workers. A status write happens once per change, only of the operator's
fields: what rank 0 of the trainer patches in between (progress, checkpoints,
output) stays as the trainer wrote it. Each write shows as a new
resourceVersion of the job.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import Jobs, ftj, wait_for

from kubetune_operator.plan import Plan
from kubetune_operator.reconcile import Reconciler

pytestmark = pytest.mark.cluster

TRAINER_STATUS: dict[str, Any] = {
    "progress": {"step": 10, "totalSteps": 100, "loss": 1.5, "updatedAt": "2026-11-21T11:59:50Z"},
    "progressText": "10/100",
    "checkpoints": {"latest": {"step": 10, "uri": "s3://models/j/checkpoints/step-00000010/",
                               "committedAt": "2026-11-21T11:59:40Z"}, "committed": 1},
    "output": {"uri": "s3://models/j/"},
}


@pytest.fixture
def reconciler(cluster: Any, crd: None) -> Reconciler:
    return Reconciler(cluster.api_client())


def version(jobs: Jobs, name: str) -> str:
    return str(jobs.get(name)["metadata"]["resourceVersion"])


def settled(reconciler: Reconciler, jobs: Jobs, name: str, phase: str) -> str:
    """Reconcile until the job is in `phase` and a pass writes nothing more; its resourceVersion."""
    def quiet() -> str | None:
        before = version(jobs, name)
        reconciler.reconcile(jobs.ns, name)
        return before if version(jobs, name) == before and jobs.status(name).get("phase") == phase else None

    return str(wait_for(quiet, timeout=60, what=f"{name} {phase} with nothing more to write"))


def test_status_is_written_once_per_change_and_never_the_trainers_fields(
        cluster: Any, jobs: Jobs, reconciler: Reconciler) -> None:
    jobs.apply(ftj("j"))
    reconciler.reconcile(jobs.ns, "j")
    assert jobs.status("j")["phase"] == "Pending" and len(jobs.pods("j")) == 2
    settled(reconciler, jobs, "j", "Running")

    # Rank 0 reports, as it does: a merge patch on the status subresource.
    cluster.kubectl("patch", "ftj", "j", "-n", jobs.ns, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": TRAINER_STATUS}))
    reported = version(jobs, "j")
    reconciler.reconcile(jobs.ns, "j")
    assert version(jobs, "j") == reported, "nothing of the operator's changed: no write"

    # A change for the operator: a worker is lost, the gang restarts. One write, the trainer's part kept.
    cluster.kubectl("delete", "pod", "j-worker-1", "-n", jobs.ns, "--wait=false")

    def restarting() -> Plan | None:
        plan = reconciler.reconcile(jobs.ns, "j")
        return plan if plan is not None and plan.restart_cause is not None else None

    plan = wait_for(restarting, timeout=30, what="the pass that restarts the gang")
    status = jobs.status("j")
    assert status["phase"] == plan.status.phase == "Restarting"
    assert status["restarts"] == {"infrastructure": 1, "application": 0, "hang": 0}
    assert {key: status[key] for key in TRAINER_STATUS} == TRAINER_STATUS


def test_jobs_due(jobs: Jobs, reconciler: Reconciler) -> None:
    jobs.apply(ftj("due"))
    key = (jobs.ns, "due")
    assert key in reconciler.jobs_due((jobs.ns,)), "a job never looked at is due"
    reconciler.reconcile(jobs.ns, "due")
    assert key not in reconciler.jobs_due((jobs.ns,)), "its plan asked for a later look, not now"
    jobs.cluster.kubectl("delete", "ftj", "due", "-n", jobs.ns, "--wait=true")
    assert reconciler.jobs_due((jobs.ns,)) == [] and key not in reconciler._slots, "a deleted job is forgotten"
