"""One reconcile pass of a FineTuneJob: fetch -> decide -> act -> one status write.

`Reconciler` is what the kopf handlers and the resync loop call; it is the one
module that uses the API client (`kube.py`), so everything below it (plan,
status, children, workers, failures) stays pure and everything above it never
touches the API itself.

The job and its pods are read from the operator's informers (informer.py), so a
pass reads nothing from the API server; until they have listed (at start-up),
and where no informers run (tests), they are read from the API server. What a
pass writes goes into the view as soon as the API server answers, so the next
pass builds on the restart counters and pods last written even before the watch
delivers them. The status is read as the typed model and written once per pass,
as a merge patch of the operator's own fields, and only when they differ from
what is stored. Passes over the same job never overlap within the process (a slot per
job); leader election (leadership.py) keeps a second replica from acting at the same time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from kubernetes.client.rest import ApiException

from kubetune_api import Manifest, SpecError, parse_spec, utc_now
from kubetune_api.constants import KUEUE_PRIORITY_LABEL, TERMINAL_PHASES

from . import kueue, metrics
from .children import JobRef, build_children, namespace_identity
from .informer import View
from .kube import Kube
from .plan import Observed, Plan, plan, plan_invalid
from .status import needs_write, read_status, status_patch
from .workers import DEFAULT_TRAINER_IMAGE, build_preflight_pod, build_worker_pod

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)

# A job whose plan asked for no earlier look is still re-examined this often.
SAFETY_RESYNC_SECONDS = 600.0

JobKey = tuple[str, str]  # (namespace, name)


class _Slot:
    """Per-job guard: one pass at a time, and triggers during a pass coalesce into one more."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dirty = False
        self.due = 0.0  # time.monotonic() when the job wants its next look; 0: unknown, now


T = TypeVar("T")


def run_coalesced(slot: _Slot, one_pass: Callable[[], T | None]) -> T | None:
    """Run `one_pass` under the slot's lock; a trigger while it runs makes it run once more, and a
    trigger while another thread runs it returns None at once (that thread runs it again)."""
    slot.dirty = True  # before trying the lock, so the running pass cannot miss it
    result: T | None = None
    while slot.dirty:
        if not slot.lock.acquire(blocking=False):
            return result
        try:
            if not slot.dirty:
                return result
            slot.dirty = False
            result = one_pass()
        finally:
            slot.lock.release()
    return result


def needs_resync(job: Mapping[str, Any]) -> bool:
    """Unfinished jobs, and finished ones that still wait for their TTL."""
    finished = read_status(job.get("status")).phase in TERMINAL_PHASES
    # A cheap look at one field of a LIST item; the pass itself parses the whole spec.
    ttl = ((job.get("spec") or {}).get("runPolicy") or {}).get("ttlSecondsAfterFinished")
    return not finished or ttl is not None


class Reconciler:
    """Reconciles FineTuneJobs through one API client, one pass per job at a time."""

    def __init__(self, api_client: ApiClient, trainer_image: str = DEFAULT_TRAINER_IMAGE,
                 qps: float = 50.0, burst: int = 100, kueue: bool = False, view: View | None = None) -> None:
        self._kube = Kube(api_client, qps, burst)
        self.view = view  # the informers' view; None: every pass reads from the API server
        self.trainer_image = trainer_image
        self.kueue = kueue  # jobs labelled kueue.x-k8s.io/queue-name wait for Kueue's admission
        self._slots: defaultdict[JobKey, _Slot] = defaultdict(_Slot)
        self._slots_guard = threading.Lock()
        self._identities: set[str] = set()  # namespaces whose worker identity this process created or found

    def reconcile(self, namespace: str, name: str, now: datetime | None = None) -> Plan | None:
        """Bring one job's children and status in line with its spec.

        Returns the plan carried out, or None when the job is gone or when another
        pass over the job is running right now: that pass runs once more instead,
        so a burst of pod events costs one or two passes, not one each.
        """
        with self._slots_guard:
            slot = self._slots[(namespace, name)]

        def one_pass() -> Plan | None:
            with metrics.RECONCILE_SECONDS.time():
                result = self._pass(namespace, name, now or utc_now())
            wait = result.requeue_after if result and result.requeue_after is not None else SAFETY_RESYNC_SECONDS
            slot.due = time.monotonic() + wait
            return result

        return run_coalesced(slot, one_pass)

    def jobs_due(self, namespaces: tuple[str, ...] = ()) -> list[JobKey]:
        """The jobs whose last plan asked to be looked at again by now (or that have none yet).

        One LIST of every job in `namespaces` (all when empty); jobs that no
        longer exist are forgotten on the way (their deletion wakes no pass).
        """
        view = self._ready_view()
        jobs = view.jobs.items() if view is not None else self._kube.list_jobs(namespaces)
        keys = [(j["metadata"]["namespace"], j["metadata"]["name"]) for j in jobs]
        present = set(keys)
        metrics.keep_only(present)
        now = time.monotonic()
        with self._slots_guard:
            for key in set(self._slots) - present:
                if not self._slots[key].lock.locked():
                    del self._slots[key]
            due_at = {key: slot.due for key, slot in self._slots.items()}
        return [key for key, job in zip(keys, jobs, strict=True)
                if needs_resync(job) and now >= due_at.get(key, 0.0)]

    @property
    def kube(self) -> Kube:
        return self._kube

    def _ready_view(self) -> View | None:
        return self.view if self.view is not None and self.view.ready() else None

    def _remember(self, pod: Manifest | None) -> None:
        """A pod as the API server answered its create or deletion (with deletionTimestamp): in the view
        before its watch event. A pod whose DELETED event came first stays gone (Store.write)."""
        if pod is not None and self.view is not None:
            self.view.pods.write(pod)

    def _ensure_identity(self, namespace: str) -> None:
        """The namespace's worker ServiceAccount, Role and RoleBinding, created if absent: once per namespace
        and process, before its first worker pod."""
        if namespace not in self._identities:
            for manifest in namespace_identity(namespace):
                self._kube.create_if_absent(manifest)
            self._identities.add(namespace)

    def _pass(self, namespace: str, name: str, now: datetime) -> Plan | None:
        kube, view = self._kube, self._ready_view()
        job = view.jobs.get(namespace, name) if view is not None else kube.get_job(namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            metrics.observe_phase(namespace, name, None)
            return None
        meta = job["metadata"]
        ref = JobRef(name=name, namespace=namespace, uid=meta["uid"])
        pods = view.pods.by_index(namespace, name) if view is not None else kube.list_workers(namespace, name)
        stored = read_status(job.get("status"))
        queue_name = kueue.queue_name(job) if self.kueue else None
        workload: Manifest | None = None
        queue = None
        if queue_name is not None:
            workload, served = kube.get_workload(namespace, kueue.workload_name(ref))
            priority, problem = self._priority(job) if workload is None and served else (None, "")
            queue = kueue.QueueState(queue_name, kueue.WorkloadState.read(workload) if workload else None,
                                     kueue_missing=not served, priority=priority, problem=problem)
        observed = Observed(name=name, generation=int(meta.get("generation", 1)), status=stored, pods=pods, now=now,
                            queue=queue)
        try:
            spec = parse_spec(job.get("spec"))
        except SpecError as e:
            decision = plan_invalid(observed, str(e))
        else:
            decision = plan(spec, observed)
            if decision.ensure_workload and queue is not None:
                template = build_worker_pod(ref, spec, 0, 1, self.trainer_image)
                kube.create_workload(kueue.build_workload(ref, spec, queue.queue, template, queue.priority))
            if decision.ensure_children:
                for child in build_children(ref):
                    kube.create_if_absent(child)
            where = self._placement(queue) if decision.create_ranks else None
            if decision.create_ranks or decision.create_preflight:
                self._ensure_identity(namespace)
            creating = [build_preflight_pod(ref, spec, self.trainer_image)] if decision.create_preflight else []
            preflight = decision.status.preflight
            creating += [build_worker_pod(ref, spec, rank, decision.attempt, self.trainer_image,
                                      data_cache_key=preflight.cache_key if preflight else None)
                     for rank in decision.create_ranks]
            for child in creating:
                try:
                    self._remember(kube.create_if_absent(kueue.place(child, where) if where else child))
                except ApiException:
                    # Someone may have deleted the namespace's worker identity (a pod naming a missing
                    # ServiceAccount is refused): the next pass creates it again.
                    self._identities.discard(namespace)
                    raise

        if needs_write(stored, decision.status):
            written = kube.patch_status(namespace, name, status_patch(decision.status))
            if self.view is not None:
                self.view.jobs.write(written)
        for event in decision.events:
            log.info("%s/%s: %s: %s", namespace, name, event.reason, event.message)  # `kubectl logs` tells it too
            kube.record_event(job, event.type, event.reason, event.message)
        uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
        for pod in decision.delete_pods:
            self._remember(kube.delete_pod(namespace, pod, uids[pod], decision.delete_grace))
        if workload is not None:
            self._update_workload(workload, decision, now)
        if decision.restart_cause is not None:
            metrics.RESTARTS.labels(decision.restart_cause.value).inc()
        if decision.delete_job:
            kube.delete_job(namespace, name, meta["uid"])
            metrics.observe_phase(namespace, name, None)
        else:
            metrics.observe_phase(namespace, name, decision.status.phase)
        return decision

    # ---------------------------------------------------------------- Kueue (kueue.py)
    def _priority(self, job: Manifest) -> tuple[tuple[str, int] | None, str]:
        """The job's WorkloadPriorityClass (name, value) and, when the label names none, the problem."""
        wpc = kueue.priority_class(job)
        if wpc is None:
            return None, ""
        found = self._kube.get_kueue_object(kueue.PRIORITY_CLASSES, wpc)
        if found is None:
            return None, (f"the label {KUEUE_PRIORITY_LABEL}={wpc} names no WorkloadPriorityClass; "
                          "create it, or correct or remove the label")
        return (wpc, int(found.get("value", 0))), ""

    def _placement(self, queue: kueue.QueueState | None) -> kueue.Placement | None:
        wl = queue.workload if queue is not None else None
        if wl is None or not wl.flavors:
            return None
        flavors = [f for name in wl.flavors if (f := self._kube.get_kueue_object(kueue.RESOURCE_FLAVORS, name))]
        return kueue.placement(flavors)

    def _update_workload(self, wl: Manifest, decision: Plan, now: datetime) -> None:
        ns, name = wl["metadata"]["namespace"], wl["metadata"]["name"]
        if decision.workload_active is not None:
            self._kube.patch_workload(ns, name, {"spec": {"active": decision.workload_active}})
        if decision.release_quota is not None:
            reason, message = decision.release_quota
            self._kube.patch_workload(ns, name, kueue.release_patch(wl, reason, message, now), status=True)
        if decision.finish_workload is not None:
            succeeded, message = decision.finish_workload
            self._kube.patch_workload(ns, name, kueue.finish_patch(wl, succeeded, message, now), status=True)
