"""Kueue admission, the operator's side: FineTuneJob as Kueue's external framework.

Kueue is configured with `integrations.externalFrameworks:
["FineTuneJob.v1alpha1.kubetune.io"]`; it then admits, for a job labelled
`kueue.x-k8s.io/queue-name`, the Workload the operator creates and owns, and
this operator does what Kueue's own job integrations do:

- create one Workload per job (one pod set "workers": count = nodes, the worker
  pod template with its GPU requests; the priority of the WorkloadPriorityClass
  named by `kueue.x-k8s.io/priority-class`), and no worker pod until Kueue
  admits it;
- run the workers on the admitted flavors (their node labels and tolerations);
- on eviction stop the workers with their grace period (they commit a
  checkpoint), and once none runs, give the quota back: clear the Workload's
  admission (QuotaReserved=False, Requeued), so Kueue queues it again;
- keep `spec.active` equal to "not suspended" (Kueue evicts a deactivated one);
- mark it Finished when the job succeeds or fails, which releases its quota.

Everything here is pure: manifests and patches from data. reconcile.py makes the calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetune_api import FineTuneJobSpec, Manifest, format_timestamp
from kubetune_api.constants import KUEUE_PRIORITY_LABEL, KUEUE_QUEUE_LABEL

from .children import JobRef, metadata

KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
WORKLOADS = "workloads"
RESOURCE_FLAVORS = "resourceflavors"
PRIORITY_CLASSES = "workloadpriorityclasses"
POD_SET = "workers"
# Kueue's Workload condition types.
QUOTA_RESERVED = "QuotaReserved"
ADMITTED = "Admitted"
EVICTED = "Evicted"
FINISHED = "Finished"
REQUEUED = "Requeued"
# Evictions after which Kueue's own integrations mark the Workload Requeued=True.
_REQUEUE_REASONS = ("Preempted", "NodeFailures")


def _label(job: Manifest, key: str) -> str | None:
    return (job["metadata"].get("labels") or {}).get(key) or None


def queue_name(job: Manifest) -> str | None:
    """The LocalQueue a job asks for (its kueue.x-k8s.io/queue-name label), or None."""
    return _label(job, KUEUE_QUEUE_LABEL)


def priority_class(job: Manifest) -> str | None:
    """The WorkloadPriorityClass a job names (its kueue.x-k8s.io/priority-class label), or None."""
    return _label(job, KUEUE_PRIORITY_LABEL)


def workload_name(job: JobRef) -> str:
    """`finetunejob-<name>-<uid prefix>`: a job recreated under the same name gets a new Workload."""
    return f"finetunejob-{job.name}-{job.uid[:5]}"


def build_workload(job: JobRef, spec: FineTuneJobSpec, queue: str, template: Manifest,
                   priority: tuple[str, int] | None) -> Manifest:
    """The job's Workload: one pod set of `spec.resources.nodes` workers shaped like `template` (a
    worker pod), owned by the job (deleting the job deletes it)."""
    pod_template = {"metadata": {"labels": dict(template["metadata"].get("labels") or {})},
                    "spec": template["spec"]}
    wl_spec: dict[str, Any] = {
        "queueName": queue,
        "active": not spec.run_policy.suspend,
        "podSets": [{"name": POD_SET, "count": spec.resources.nodes, "template": pod_template}],
    }
    if priority is not None:
        name, value = priority
        wl_spec["priorityClassRef"] = {"group": KUEUE_GROUP, "kind": "WorkloadPriorityClass", "name": name}
        wl_spec["priority"] = value
    return {"apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}", "kind": "Workload",
            "metadata": metadata(job, workload_name(job), "workload"), "spec": wl_spec}


def _condition(wl: Manifest, type_: str) -> Manifest | None:
    for cond in (wl.get("status") or {}).get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return None


def _true(wl: Manifest, type_: str) -> bool:
    cond = _condition(wl, type_)
    return cond is not None and cond.get("status") == "True"


@dataclass(frozen=True)
class WorkloadState:
    """What a decision needs to know of the job's Workload."""

    active: bool
    quota_reserved: bool
    admitted: bool
    finished: bool
    cluster_queue: str = ""
    flavors: tuple[str, ...] = ()  # the admitted flavors of the workers' pod set, one per resource
    evicted: tuple[str, str] | None = None  # (reason, message) while Evicted is True
    waiting: str = ""  # why it is not admitted, in Kueue's words

    @classmethod
    def read(cls, wl: Manifest) -> WorkloadState:
        status = wl.get("status") or {}
        admission = status.get("admission") or {}
        flavors: set[str] = set()
        for assignment in admission.get("podSetAssignments") or ():
            if assignment.get("name") == POD_SET:
                flavors.update((assignment.get("flavors") or {}).values())
        evicted = _condition(wl, EVICTED)
        reserved = _condition(wl, QUOTA_RESERVED)
        waiting = (reserved or {}).get("message", "") if not _true(wl, QUOTA_RESERVED) else ""
        if not waiting and not _true(wl, ADMITTED):
            waiting = (_condition(wl, ADMITTED) or {}).get("message", "")
        return cls(
            active=(wl.get("spec") or {}).get("active", True) is not False,
            quota_reserved=_true(wl, QUOTA_RESERVED),
            admitted=_true(wl, ADMITTED),
            finished=_true(wl, FINISHED),
            cluster_queue=admission.get("clusterQueue", ""),
            flavors=tuple(sorted(flavors)),
            evicted=(evicted.get("reason", ""), evicted.get("message", ""))
            if evicted is not None and evicted.get("status") == "True" else None,
            waiting=waiting,
        )


@dataclass(frozen=True)
class QueueState:
    """A queued job's admission as observed: its LocalQueue, and its Workload (None: not created yet)."""

    queue: str
    workload: WorkloadState | None = None
    kueue_missing: bool = False  # the Workload API is absent: Kueue is not installed
    priority: tuple[str, int] | None = None  # the WorkloadPriorityClass the label names: (name, value)
    problem: str = ""  # why no Workload can be made (the priority label names no class)


@dataclass(frozen=True)
class Placement:
    """Where an admitted job's workers go: its flavors' node labels and tolerations."""

    node_labels: dict[str, str] = field(default_factory=dict)
    tolerations: list[Manifest] = field(default_factory=list)


def placement(flavors: list[Manifest]) -> Placement:
    labels: dict[str, str] = {}
    tolerations: list[Manifest] = []
    for flavor in flavors:
        fspec = flavor.get("spec") or {}
        labels.update(fspec.get("nodeLabels") or {})
        tolerations += [t for t in fspec.get("tolerations") or () if t not in tolerations]
    return Placement(labels, tolerations)


def place(pod: Manifest, where: Placement) -> Manifest:
    """The worker pod with its flavors' node labels added to its nodeSelector and their tolerations."""
    spec = pod["spec"]
    if where.node_labels:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **where.node_labels}
    if where.tolerations:
        spec["tolerations"] = list(spec.get("tolerations") or ()) + [
            t for t in where.tolerations if t not in (spec.get("tolerations") or ())]
    return pod


def _set_condition(conditions: list[Manifest], type_: str, status: str, reason: str, message: str,
                   now: datetime, generation: int) -> None:
    for cond in conditions:
        if cond.get("type") == type_:
            if cond.get("status") != status:
                cond["lastTransitionTime"] = format_timestamp(now)
            cond.update(status=status, reason=reason, message=message[:32768], observedGeneration=generation)
            return
    conditions.append({"type": type_, "status": status, "reason": reason, "message": message[:32768],
                       "lastTransitionTime": format_timestamp(now), "observedGeneration": generation})


def _conditions_patch(wl: Manifest, changes: list[tuple[str, str, str, str]], now: datetime,
                      **status: Any) -> Manifest:
    """A status merge patch setting each (type, status, reason, message) condition, plus `status`.

    A merge patch replaces the whole conditions list, so it carries the resourceVersion it was
    built from: a concurrent change by Kueue makes it fail (409) rather than be overwritten."""
    generation = int(wl["metadata"].get("generation", 1))
    conditions = [dict(c) for c in (wl.get("status") or {}).get("conditions") or ()]
    for type_, value, reason, message in changes:
        _set_condition(conditions, type_, value, reason, message, now, generation)
    return {"metadata": {"resourceVersion": wl["metadata"]["resourceVersion"]},
            "status": {**status, "conditions": conditions}}


def release_patch(wl: Manifest, reason: str, message: str, now: datetime) -> Manifest:
    """The status patch that gives an evicted Workload's quota back once its workers are gone, as
    Kueue's job integrations do: admission cleared, QuotaReserved and Admitted False, Requeued set."""
    changes = [(REQUEUED, "True" if reason in _REQUEUE_REASONS else "False", reason, message),
               (QUOTA_RESERVED, "False", "Pending", message)]
    if _condition(wl, ADMITTED) is not None:
        changes.append((ADMITTED, "False", "NoReservation", "The workload has no reservation"))
    return _conditions_patch(wl, changes, now, admission=None)


def finish_patch(wl: Manifest, succeeded: bool, message: str, now: datetime) -> Manifest:
    """Finished=True (reason Succeeded or Failed): Kueue releases the quota at once."""
    return _conditions_patch(wl, [(FINISHED, "True", "Succeeded" if succeeded else "Failed", message)], now)
