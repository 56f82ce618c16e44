"""The operator's Kueue decisions as pure functions: Queued until admitted, eviction, quota release.

Plain Workload manifests in (as Kueue writes them), a Plan out; tests/e2e/test_kueue.py shows
the same against a real Kueue.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from harness import ftj
from test_plan import launched, observed, pod, spec

from kubetune_api import Phase, parse_spec
from kubetune_operator.children import JobRef
from kubetune_operator.kueue import (
    POD_SET,
    QueueState,
    WorkloadState,
    build_workload,
    finish_patch,
    place,
    placement,
    release_patch,
)
from kubetune_operator.plan import Observed, plan
from kubetune_operator.workers import build_worker_pod

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def cond(type_: str, status: str, reason: str = "R", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-11-21T11:00:00Z"}


def workload(*conditions: dict[str, Any], admitted_to: str | None = None, active: bool = True) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": list(conditions)}
    if admitted_to:
        status["admission"] = {"clusterQueue": admitted_to, "podSetAssignments": [
            {"name": POD_SET, "flavors": {"nvidia.com/gpu": "a100", "cpu": "a100"}, "count": 2}]}
    return {"metadata": {"name": "finetunejob-j-abcde", "namespace": "ns", "generation": 1, "resourceVersion": "7"},
            "spec": {"active": active}, "status": status}


PENDING = workload(cond("QuotaReserved", "False", "Pending",
                        "couldn't assign flavors to pod set workers: insufficient unused quota for nvidia.com/gpu "
                        "in flavor a100, 8 more needed"))
ADMITTED = workload(cond("QuotaReserved", "True", "QuotaReserved"), cond("Admitted", "True", "Admitted"),
                    admitted_to="team-a")
EVICTED = workload(cond("QuotaReserved", "True", "QuotaReserved"), cond("Admitted", "True", "Admitted"),
                   cond("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: 1) due to "
                        "prioritization in the ClusterQueue"), admitted_to="team-a")
REQUEUED = workload(cond("QuotaReserved", "False", "Pending", "Preempted ..."),
                    cond("Evicted", "True", "Preempted", "Preempted ..."), cond("Admitted", "False", "NoReservation"))


def queued(wl: dict[str, Any] | None, status: Any = None, pods: list[Any] | None = None,
           **queue: Any) -> Observed:
    obs = observed(status, pods)
    state = WorkloadState.read(wl) if wl is not None else None
    return Observed(name=obs.name, generation=obs.generation, status=obs.status, pods=obs.pods, now=obs.now,
                    queue=QueueState("team-a-queue", state, **queue))


def test_a_queued_job_without_a_workload_gets_one_and_no_worker() -> None:
    p = plan(spec(), queued(None))
    assert p.ensure_workload and not p.create_ranks and not p.ensure_children
    assert p.status.phase == Phase.QUEUED
    assert p.status.condition("Queued").status == "True"
    assert p.status.start_time is None  # the active deadline counts from admission
    assert [e.reason for e in p.events] == ["Queued"]


def test_kueue_missing_is_said_and_the_job_waits() -> None:
    p = plan(spec(), queued(None, kueue_missing=True))
    assert not p.ensure_workload and not p.create_ranks
    assert p.status.phase == Phase.QUEUED and p.status.condition("Queued").reason == "KueueNotInstalled"
    assert "Kueue, which is not installed" in (p.status.message or "")


def test_an_unknown_priority_class_is_named() -> None:
    p = plan(spec(), queued(None, problem="the label kueue.x-k8s.io/priority-class=vip names no WorkloadPriorityClass"))
    assert not p.ensure_workload and p.status.phase == Phase.QUEUED
    assert "priority-class=vip" in (p.status.message or "")


def test_pending_admission_carries_kueues_reason() -> None:
    p = plan(spec(), queued(PENDING, {"phase": "Queued", "message": "queued in LocalQueue team-a-queue: earlier"}))
    assert p.status.phase == Phase.QUEUED and not p.create_ranks
    assert "insufficient unused quota for nvidia.com/gpu in flavor a100, 8 more needed" in (p.status.message or "")
    assert [e.reason for e in p.events] == ["Queued"]  # Kueue's reason changed: said once more
    again = plan(spec(), queued(PENDING, {"phase": "Queued", "message": p.status.message}))
    assert again.events == []


def test_admission_creates_the_workers_and_says_where() -> None:
    p = plan(spec(), queued(ADMITTED, {"phase": "Queued", "conditions": [cond("Queued", "True")]}))
    assert p.create_ranks == [0, 1] and p.status.phase == Phase.PENDING
    assert p.status.condition("Queued").status == "False"
    assert p.status.start_time == NOW
    assert "admitted by Kueue to ClusterQueue team-a (flavors: a100)" in [e.message for e in p.events]


def test_eviction_stops_the_workers_with_their_grace_and_counts_an_infrastructure_restart() -> None:
    p = plan(spec(), queued(EVICTED, launched(), [pod(0), pod(1)]))
    assert p.status.phase == Phase.QUEUED and p.status.condition("Queued").reason == "Evicted"
    assert sorted(p.delete_pods) == ["j-worker-0", "j-worker-1"]
    assert p.delete_grace is None  # the pods' own grace: time to commit a checkpoint
    assert p.status.restarts.infrastructure == 1 and p.status.workers.launched is False
    assert p.release_quota is None  # not while workers still hold the nodes
    assert not p.create_ranks
    assert "Preempted" in (p.status.message or "")


def test_the_quota_goes_back_once_the_workers_are_gone() -> None:
    status = {**launched("Queued", infra=1), "workers": {"launched": False, "ready": 0, "total": 2}}
    stopping = plan(spec(), queued(EVICTED, status, [pod(0, deleting=True), pod(1, deleting=True)]))
    assert stopping.release_quota is None and stopping.status.phase == Phase.QUEUED
    gone = plan(spec(), queued(EVICTED, status, [pod(0, phase="Failed", exit_code=4, deleting=True)]))
    assert gone.release_quota is not None and gone.release_quota[0] == "Preempted"
    assert not gone.create_ranks and gone.status.restarts.infrastructure == 1  # counted once
    requeued = plan(spec(), queued(REQUEUED, status, []))
    assert requeued.release_quota is None and requeued.status.phase == Phase.QUEUED


def test_readmission_after_eviction_starts_the_next_attempt() -> None:
    status = {**launched("Queued", infra=1), "workers": {"launched": False, "ready": 0, "total": 2}}
    p = plan(spec(), queued(ADMITTED, status, []))
    assert p.create_ranks == [0, 1] and p.attempt == 2 and p.status.phase == Phase.RESTARTING


def test_suspend_deactivates_the_workload_and_releases_after_the_workers_stop() -> None:
    suspended = spec(runPolicy={"suspend": True})
    first = plan(suspended, queued(ADMITTED, launched(), [pod(0), pod(1)]))
    assert first.workload_active is False and sorted(first.delete_pods) == ["j-worker-0", "j-worker-1"]
    deactivated = workload(cond("QuotaReserved", "True"), cond("Evicted", "True", "Deactivated", "deactivated"),
                           admitted_to="team-a", active=False)
    later = plan(suspended, queued(deactivated, {"phase": "Suspended"}, []))
    assert later.workload_active is None and later.release_quota == ("Deactivated", "deactivated")
    resumed = plan(spec(), queued(workload(cond("QuotaReserved", "False"), active=False), {"phase": "Suspended"}))
    assert resumed.workload_active is True and resumed.status.phase == Phase.QUEUED


def test_a_finished_job_finishes_its_workload() -> None:
    done = plan(spec(), queued(ADMITTED, launched(), [pod(0, phase="Succeeded", exit_code=0),
                                                     pod(1, phase="Succeeded", exit_code=0)]))
    assert done.status.phase == Phase.SUCCEEDED and done.finish_workload == (True, "all 2 workers completed")
    finished = workload(cond("Finished", "True", "Succeeded"))
    assert plan(spec(), queued(finished, done.status.to_manifest())).finish_workload is None


def test_workload_manifest_and_patches() -> None:
    ref = JobRef("j", "ns", "abcdef-123")
    s = parse_spec(ftj("j", resources={"nodes": 2, "gpusPerNode": 4})["spec"])
    wl = build_workload(ref, s, "team-a-queue", build_worker_pod(ref, s, 0, 1), ("high", 1000))
    assert wl["metadata"]["name"] == "finetunejob-j-abcde"
    assert wl["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    (pod_set,) = wl["spec"]["podSets"]
    assert pod_set["count"] == 2
    assert pod_set["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert wl["spec"]["priority"] == 1000 and wl["spec"]["priorityClassRef"]["name"] == "high"
    assert wl["spec"]["queueName"] == "team-a-queue" and wl["spec"]["active"] is True

    released = release_patch(EVICTED, "Preempted", "Preempted ...", NOW + timedelta(seconds=1))
    assert released["status"]["admission"] is None and released["metadata"]["resourceVersion"] == "7"
    by_type = {c["type"]: c for c in released["status"]["conditions"]}
    assert by_type["QuotaReserved"]["status"] == "False" and by_type["Admitted"]["status"] == "False"
    assert by_type["Requeued"]["status"] == "True" and by_type["Evicted"]["status"] == "True"
    finished = {c["type"]: c for c in finish_patch(ADMITTED, False, "boom", NOW)["status"]["conditions"]}
    assert finished["Finished"]["status"] == "True" and finished["Finished"]["reason"] == "Failed"


def test_placement_adds_the_flavors_node_labels_and_tolerations() -> None:
    ref = JobRef("j", "ns", "abcdef-123")
    s = parse_spec(ftj("j", resources={"nodes": 1, "gpusPerNode": 1, "nodeSelector": {"zone": "a"}})["spec"])
    toleration = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    where = placement([{"spec": {"nodeLabels": {"gpu-type": "a100"}, "tolerations": [toleration]}}])
    worker = place(build_worker_pod(ref, s, 0, 1), where)
    assert worker["spec"]["nodeSelector"].items() >= {"zone": "a", "gpu-type": "a100"}.items()
    assert toleration in worker["spec"]["tolerations"]
