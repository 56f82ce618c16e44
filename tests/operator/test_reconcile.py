"""One reconcile pass against an API that is a dict: what is written, and how often.

The Reconciler's API client (`kube.Kube`) is replaced by a fake that keeps one
job and its pods in memory and applies status patches as the API server does
(JSON merge patch), so these tests run without a cluster and count writes.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from harness import ftj, merge_patch

from kubetune_operator import reconcile

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


class FakeKube:
    """The calls reconcile.py makes, on one job held in memory."""

    def __init__(self, *_: Any) -> None:
        job = ftj("j")
        job["metadata"].update(namespace="ml", uid="uid-j", generation=1)
        self.job: dict[str, Any] | None = job
        self.pods: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.status_patches: list[dict[str, Any]] = []

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.job)

    def list_jobs(self, namespaces: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        return [copy.deepcopy(self.job)] if self.job else []

    def list_workers(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.pods.values()))

    def create_if_absent(self, manifest: dict[str, Any]) -> bool:
        self.created.append(f"{manifest['kind']}/{manifest['metadata']['name']}")
        if manifest["kind"] == "Pod":
            pod = copy.deepcopy(manifest)
            pod["metadata"]["uid"] = f"uid-{pod['metadata']['name']}"
            pod["status"] = {"phase": "Pending"}
            self.pods.setdefault(pod["metadata"]["name"], pod)
        return True

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        assert self.job is not None
        self.status_patches.append(status)
        self.job["status"] = merge_patch(self.job.get("status") or {}, status)

    def record_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        pass

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        self.pods.pop(name, None)

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        self.job = None


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> tuple[reconcile.Reconciler, FakeKube]:
    monkeypatch.setattr(reconcile, "Kube", FakeKube)
    reconciler = reconcile.Reconciler(api_client=None)
    kube = reconciler._kube
    assert isinstance(kube, FakeKube)
    return reconciler, kube


def run_all(kube: FakeKube) -> None:
    for pod in kube.pods.values():
        pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}


def test_status_is_written_once_per_change_and_never_the_trainers_fields(fake: Any) -> None:
    reconciler, kube = fake
    reconciler.reconcile("ml", "j", now=NOW)
    assert kube.created[-2:] == ["Pod/j-worker-0", "Pod/j-worker-1"]
    assert len(kube.status_patches) == 1 and kube.job["status"]["phase"] == "Pending"

    # The trainer reports; the operator looks again with nothing changed for it: no write.
    trainer = {"progress": {"step": 10, "totalSteps": 100}, "progressText": "10/100",
               "checkpoints": {"committed": 0}, "output": {"uri": "s3://models/j/"}}
    kube.job["status"].update(copy.deepcopy(trainer))
    reconciler.reconcile("ml", "j", now=NOW + timedelta(minutes=1))
    assert len(kube.status_patches) == 1

    run_all(kube)
    reconciler.reconcile("ml", "j", now=NOW + timedelta(minutes=2))
    assert len(kube.status_patches) == 2 and kube.job["status"]["phase"] == "Running"
    for patch in kube.status_patches:
        assert {"progress", "progressText", "checkpoints", "output"}.isdisjoint(patch)
    assert {k: kube.job["status"][k] for k in trainer} == trainer
    ready = next(c for c in kube.job["status"]["conditions"] if c["type"] == "Ready")
    assert ready == {**ready, "status": "True", "lastTransitionTime": "2026-11-21T12:02:00Z"}


def test_jobs_due(fake: Any) -> None:
    reconciler, kube = fake
    assert reconciler.jobs_due() == [("ml", "j")], "a job never looked at is due"
    reconciler.reconcile("ml", "j", now=NOW)
    assert reconciler.jobs_due() == [], "its plan asked for a look in POLL_SECONDS, not now"
    kube.job = None
    assert reconciler.jobs_due() == [] and not reconciler._slots, "a deleted job is forgotten"
