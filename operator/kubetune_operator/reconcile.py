"""One reconcile pass of a FineTuneJob: fetch -> decide -> act -> one status write.

The job is read fresh from the API server (never from a possibly stale watch
event), so the restart counters a decision builds on are the ones last written.
Passes over the same job never overlap within the process (a slot per job);
peering keeps a second operator process from running at the same time.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from kubetune_api import FineTuneJobSpec, SpecError, parse_spec

from . import metrics
from .children import JobRef, build_children
from .kube import Kube
from .plan import Observed, Plan, plan, plan_invalid
from .workers import DEFAULT_TRAINER_IMAGE, build_worker_pod

# A job whose plan asked for no earlier look is still re-examined this often.
SAFETY_RESYNC_SECONDS = 600.0


class _Slot:
    """Per-job guard: one pass at a time, and triggers during a pass coalesce into one more."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dirty = False
        self.due = 0.0  # time.monotonic() when the job wants its next look; 0: unknown, now


def is_due(namespace: str, name: str, now: float) -> bool:
    """True when the last plan for the job asked to be looked at again by `now` (or there was none)."""
    with _slots_guard:
        slot = _slots.get((namespace, name))
    return slot is None or now >= slot.due


_slots: defaultdict[tuple[str, str], _Slot] = defaultdict(_Slot)
_slots_guard = threading.Lock()


def _slot_for(namespace: str, name: str) -> _Slot:
    with _slots_guard:
        return _slots[(namespace, name)]


def _changed(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    return any(current.get(key) != value for key, value in desired.items())


def reconcile(kube: Kube, namespace: str, name: str, trainer_image: str = DEFAULT_TRAINER_IMAGE,
              now: datetime | None = None) -> Plan | None:
    """Bring one job's children and status in line with its spec.

    Returns the plan carried out, or None when the job is gone or when another
    pass over the job is running right now: that pass runs once more instead,
    so a burst of pod events costs one or two passes, not one each.
    """
    slot = _slot_for(namespace, name)
    slot.dirty = True  # before trying the lock, so the running pass cannot miss it
    result: Plan | None = None
    while slot.dirty:
        if not slot.lock.acquire(blocking=False):
            return result
        try:
            if not slot.dirty:
                return result
            slot.dirty = False
            with metrics.RECONCILE_SECONDS.time():
                result = _reconcile(kube, namespace, name, trainer_image,
                                    now or datetime.now(UTC).replace(microsecond=0))
            wait = result.requeue_after if result and result.requeue_after is not None else SAFETY_RESYNC_SECONDS
            slot.due = time.monotonic() + wait
        finally:
            slot.lock.release()
    return result


def _reconcile(kube: Kube, namespace: str, name: str, trainer_image: str, now: datetime) -> Plan | None:
    job = kube.get_job(namespace, name)
    if job is None or job["metadata"].get("deletionTimestamp"):
        metrics.observe_phase(namespace, name, None)
        return None
    meta = job["metadata"]
    ref = JobRef(name=name, namespace=namespace, uid=meta["uid"])
    pods = kube.list_workers(namespace, name)
    status = job.get("status") or {}
    observed = Observed(name=name, generation=int(meta.get("generation", 1)), status=status, pods=pods, now=now)
    spec: FineTuneJobSpec | None
    try:
        spec = parse_spec(job.get("spec"))
    except SpecError as e:
        spec, decision = None, plan_invalid(observed, str(e))
    else:
        decision = plan(spec, observed)

    if spec is not None:
        if decision.ensure_children:
            for child in build_children(ref, spec):
                kube.create_if_absent(child)
        for rank in decision.create_ranks:
            kube.create_if_absent(build_worker_pod(ref, spec, rank, decision.attempt, trainer_image))
    if _changed(status, decision.status):
        kube.patch_status(namespace, name, decision.status)
    for event in decision.events:
        kube.record_event(job, event.type, event.reason, event.message)
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
    for pod in decision.delete_pods:
        kube.delete_pod(namespace, pod, uids[pod])
    if decision.restart_cause is not None:
        metrics.RESTARTS.labels(decision.restart_cause.value).inc()
    if decision.delete_job:
        kube.delete_job(namespace, name, meta["uid"])
        metrics.observe_phase(namespace, name, None)
    else:
        metrics.observe_phase(namespace, name, decision.status.get("phase"))
    return decision


def forget_all_but(jobs: set[tuple[str, str]]) -> None:
    """Drop the per-job slots of jobs that no longer exist."""
    with _slots_guard:
        for key in set(_slots) - jobs:
            if not _slots[key].lock.locked():
                del _slots[key]
