"""One reconcile decision: from what exists to what to do, as a pure function.

`plan()` reads the job's spec, its status (the typed `FineTuneJobStatus`), its
worker pods and the time, and returns a `Plan`: the operator-owned part of the
status (a `FineTuneJobStatus` with the trainer's fields unset; see status.py),
the workers to create or delete, the Events to record, and when to look again.
Nothing here calls the API, reads the clock or the environment; `reconcile.py`
carries the plan out, in an order that keeps every step safe to repeat after a crash:

    create workers -> write status -> delete workers -> delete the job (TTL)

Creating before the status write means `workers.launched` is only recorded
once every worker exists; writing before deleting means a restart is counted
before its evidence (the failed pods) disappears, so it is never counted twice
nor mistaken for a worker that vanished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kubetune_api import (
    FineTuneJobSpec,
    FineTuneJobStatus,
    Manifest,
    PreflightStatus,
    RestartsStatus,
    WorkersStatus,
    parse_timestamp,
)
from kubetune_api.constants import (
    CONDITION_READY,
    CONDITION_RECONCILING,
    CONDITION_STALLED,
    KUEUE_QUEUE_LABEL,
    REASON_ADMITTED,
    REASON_BACKOFF_LIMIT_EXCEEDED,
    REASON_CREATING_WORKERS,
    REASON_DEADLINE_EXCEEDED,
    REASON_EARLY_STOPPED,
    REASON_EVICTED,
    REASON_HANG,
    REASON_HANG_LIMIT_EXCEEDED,
    REASON_INVALID_SPEC,
    REASON_KUEUE_MISSING,
    REASON_PREFLIGHT,
    REASON_PREFLIGHT_FAILED,
    REASON_QUEUED,
    REASON_RESTARTING,
    REASON_RESUMED,
    REASON_SUSPENDED,
    REASON_TRAINING_COMPLETE,
    REASON_WAITING_FOR_WORKERS,
    REASON_WORKERS_NOT_STARTED,
    REASON_WORKERS_RUNNING,
    TERMINAL_PHASES,
    Phase,
)

from .failures import Cause, WorkerFailure, classify, gang_failure
from .kueue import KUEUE_GROUP, KUEUE_VERSION, QueueState
from .status import conditions_for
from .workers import ATTEMPT_LABEL, PREFLIGHT_COMPONENT, RANK_LABEL, TRAINER_CONTAINER

# How soon to look again while workers start or go. Their pod events wake the
# operator anyway; this is the fallback should one be missed, kept long so that
# polling never competes with real work for the API budget.
POLL_SECONDS = 30.0
# The grace period of workers stopped after a failure or a hang (1, not 0: 0 would remove the pod
# object before its processes are gone, and a new worker of the same name could start beside them).
QUICK_STOP_SECONDS = 1
# How much longer than spec.runPolicy.progressDeadlineSeconds the operator waits for a progress
# report before it treats the job as hung itself: the trainer's watchdog fires at the deadline and
# takes up to a minute to store its report; this is the backstop for a watchdog that cannot fire
# (a process frozen by SIGSTOP, a node gone silent).
HANG_MARGIN_SECONDS = 120.0
# How long a worker may keep running after another one completed. A trainer exits 0 only after the
# final barrier, which every rank reached after the export and the last commit: a rank still
# running is only shutting down, and one that takes longer is stuck (stopped, or hung on exit).
EXIT_GRACE_SECONDS = 120.0


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """Everything a decision depends on, read once per reconcile."""

    name: str  # the job's name
    generation: int
    status: FineTuneJobStatus  # the job's .status as stored (read leniently; may be empty)
    pods: list[Manifest]  # the job's pods: its workers, any attempt, and its preflight pod
    now: datetime  # aware, UTC, to the second
    queue: QueueState | None = None  # admission by Kueue; None: the job is not queued (kueue.py)


@dataclass
class Plan:
    # The operator-owned status fields (the trainer's are left unset), written
    # with a merge patch when they differ from what is stored.
    status: FineTuneJobStatus = field(default_factory=FineTuneJobStatus)
    attempt: int = 1
    ensure_children: bool = False
    create_preflight: bool = False
    create_ranks: list[int] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    # The grace period of those deletions; None: the pods' own (runPolicy.terminationGracePeriodSeconds).
    delete_grace: int | None = None
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    delete_job: bool = False
    restart_cause: Cause | None = None
    # Kueue (a queued job only): create its Workload; set its spec.active; give its quota back
    # after an eviction, (reason, message); mark it Finished, (succeeded, message).
    ensure_workload: bool = False
    workload_active: bool | None = None
    release_quota: tuple[str, str] | None = None
    finish_workload: tuple[bool, str] | None = None


def _rank(pod: Manifest) -> int:
    return int(pod["metadata"].get("labels", {}).get(RANK_LABEL, "-1"))


def _attempt(pod: Manifest) -> int:
    return int(pod["metadata"].get("labels", {}).get(ATTEMPT_LABEL, "0"))


def _finished(pod: Manifest) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def _succeeded(pod: Manifest) -> bool:
    return pod.get("status", {}).get("phase") == "Succeeded"


def _finished_at(pod: Manifest) -> datetime | None:
    times = [parse_timestamp(t) for c in pod.get("status", {}).get("containerStatuses") or ()
             if (t := ((c.get("state") or {}).get("terminated") or {}).get("finishedAt"))]
    return max(times) if times else None


def _stragglers(b: _Builder, spec: FineTuneJobSpec, live: list[Manifest]) -> list[str]:
    """Workers still running EXIT_GRACE_SECONDS after another one completed (see there), which the
    job no longer needs; none yet while in the grace (and when to look again)."""
    done = [p for p in live if _succeeded(p)]
    running = [p["metadata"]["name"] for p in live if not _succeeded(p) and not p["metadata"].get("deletionTimestamp")]
    if not done or not running or len(live) != spec.resources.nodes:
        return []
    since = min((t for p in done if (t := _finished_at(p)) is not None), default=b.obs.now)
    remaining = EXIT_GRACE_SECONDS - (b.obs.now - since).total_seconds()
    if remaining > 0:
        b.plan.requeue_after = _sooner(b.plan.requeue_after, remaining)
        return []
    return sorted(running)


def _is_ready(pod: Manifest) -> bool:
    status = pod.get("status", {})
    if status.get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def _waiting_reason(pods: list[Manifest]) -> str:
    """Why workers are not running yet, in the scheduler's or kubelet's own words."""
    for pod in sorted(pods, key=_rank):
        name = pod["metadata"]["name"]
        for cond in pod.get("status", {}).get("conditions") or ():
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"; {name}: {cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}".rstrip(": ")
        for cs in pod.get("status", {}).get("containerStatuses") or ():
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                return f"; {name}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    return ""


class _Builder:
    """Accumulates one plan's status fields and events."""

    def __init__(self, obs: Observed, nodes: int) -> None:
        self.obs = obs
        old = obs.status
        self.old_phase: Phase | None = old.phase
        restarts = old.restarts or RestartsStatus()
        self.restarts = {"infrastructure": restarts.infrastructure, "application": restarts.application,
                         "hang": restarts.hang}
        self.launched = old.workers.launched if old.workers else False
        self.start_time: datetime = old.start_time or obs.now
        self.preflight: PreflightStatus | None = old.preflight
        self.nodes = nodes
        self.plan = Plan()

    @property
    def attempt(self) -> int:
        return 1 + sum(self.restarts.values())

    def event(self, type_: str, reason: str, message: str) -> None:
        self.plan.events.append(Event(type_, reason, message))

    def finish(self, phase: Phase, reason: str, message: str, ready: int = 0, stalled: bool = False) -> Plan:
        obs = self.obs
        if phase == Phase.RESTARTING and not stalled and _stalled_by_hang(obs.status):
            stalled, reason = True, REASON_HANG  # restarting for a hang: Stalled until the new workers run
        completion = (obs.status.completion_time or obs.now) if phase in TERMINAL_PHASES else None
        self.plan.status = FineTuneJobStatus(
            observed_generation=obs.generation,
            phase=phase,
            conditions=conditions_for(phase, reason, message, obs.status, obs.now, obs.generation, stalled),
            # A job waiting for Kueue has not started: its active deadline counts from admission.
            start_time=None if phase == Phase.QUEUED else self.start_time,
            completion_time=completion,
            workers=WorkersStatus(ready=ready, total=self.nodes, launched=self.launched, attempt=self.attempt),
            restarts=RestartsStatus(**self.restarts),
            preflight=self.preflight,
            message=message,
        )
        self.plan.attempt = self.attempt
        return self.plan


def plan_invalid(obs: Observed, problem: str) -> Plan:
    """A spec that got past admission but not the parse step: Failed, no workers."""
    b = _Builder(obs, nodes=0)
    b.plan.delete_pods = [p["metadata"]["name"] for p in obs.pods if not p["metadata"].get("deletionTimestamp")]
    if b.old_phase != Phase.FAILED:
        b.event("Warning", REASON_INVALID_SPEC, problem)
    return b.finish(Phase.FAILED, REASON_INVALID_SPEC, problem)


def _terminal(b: _Builder, spec: FineTuneJobSpec, phase: Phase) -> Plan:
    """Succeeded or Failed already: stop leftover workers and honour the TTL."""
    obs = b.obs
    # Completed workers stay (their logs are useful); running ones go.
    b.plan.delete_pods = [p["metadata"]["name"] for p in obs.pods
                          if not _finished(p)
                          and not p["metadata"].get("deletionTimestamp")]
    plan = b.finish(phase, _last_reason(obs.status, phase), obs.status.message or "")
    ttl = spec.run_policy.ttl_seconds_after_finished
    done = plan.status.completion_time
    if ttl is not None and done is not None:
        remaining = (done + timedelta(seconds=ttl) - obs.now).total_seconds()
        if remaining <= 0:
            plan.delete_job = True
        else:
            plan.requeue_after = remaining
    return plan


def _last_reason(status: FineTuneJobStatus, phase: Phase) -> str:
    """The reason the job reached its terminal phase, as its condition of that name recorded it."""
    cond = status.condition(phase)
    return cond.reason if cond is not None else str(phase)


def plan(spec: FineTuneJobSpec, obs: Observed) -> Plan:
    """What to do about a job whose spec parsed: its status, workers, Events and next look."""
    decided = _plan(spec, obs)
    phase = decided.status.phase
    wl = obs.queue.workload if obs.queue is not None else None
    if phase in TERMINAL_PHASES and wl is not None and not wl.finished:
        # Finished releases the job's quota at once (and Kueue never admits it again).
        decided.finish_workload = (phase == Phase.SUCCEEDED, decided.status.message or str(phase))
    ttl = spec.run_policy.ttl_seconds_after_finished
    if decided.status.phase in TERMINAL_PHASES and ttl is not None and not decided.delete_job:
        # Also on the pass that finishes the job: its next look is when the TTL runs out.
        done = decided.status.completion_time or obs.now
        remaining = (done + timedelta(seconds=ttl) - obs.now).total_seconds()
        decided.requeue_after = _sooner(decided.requeue_after, max(remaining, 0.0))
    return decided


def _plan(spec: FineTuneJobSpec, obs: Observed) -> Plan:
    b = _Builder(obs, spec.resources.nodes)
    if b.old_phase is not None and b.old_phase in TERMINAL_PHASES:
        return _terminal(b, spec, b.old_phase)

    preflights = [p for p in obs.pods if _is_preflight(p)]
    workers = [p for p in obs.pods if not _is_preflight(p)]
    live = [p for p in workers if not _being_replaced(p, b.attempt)]
    stale = [p for p in workers if _being_replaced(p, b.attempt)]
    b.plan.delete_pods = [p["metadata"]["name"] for p in stale if not p["metadata"].get("deletionTimestamp")]

    if spec.run_policy.suspend:
        b.launched = False
        b.plan.delete_pods += [p["metadata"]["name"] for p in live + preflights
                               if not p["metadata"].get("deletionTimestamp")]
        if b.old_phase != Phase.SUSPENDED:
            b.event("Normal", REASON_SUSPENDED, "suspended: worker pods deleted; resume continues from the last checkpoint")
        if obs.queue is not None and obs.queue.workload is not None:
            # Deactivated, Kueue evicts the Workload; its quota goes back once the workers are gone.
            wl = obs.queue.workload
            if wl.active:
                b.plan.workload_active = False
            if wl.quota_reserved and wl.evicted is not None and not _holding(obs.pods):
                b.plan.release_quota = wl.evicted
        return b.finish(Phase.SUSPENDED, REASON_SUSPENDED, "suspended (spec.runPolicy.suspend)")

    if b.old_phase == Phase.SUSPENDED:
        b.start_time = obs.now  # like a Job: the active deadline restarts on resume
        b.event("Normal", REASON_RESUMED, "resumed: recreating worker pods")

    if spec.preflight.enabled and not b.launched and not live and not _passed(b.preflight):
        # Before Kueue's admission: a job that cannot run does not wait for quota. The active deadline counts.
        checking = _past_deadline(b, spec, preflights) or _preflight(b, preflights)
        if checking is not None:
            return checking

    if obs.queue is not None:
        queued = _admission(b, obs.queue, live)
        if queued is not None:
            return queued

    expired = _past_deadline(b, spec, live)
    if expired is not None:
        return expired

    failures: list[WorkerFailure] = [f for p in live if (f := classify(p)) is not None]
    present = {_rank(p) for p in live}
    if b.launched:
        for rank in range(spec.resources.nodes):
            if rank not in present:
                name = f"{obs.name}-worker-{rank}"
                failures.append(WorkerFailure(Cause.INFRASTRUCTURE, name, "WorkerLost",
                                              f"worker {name} disappeared (deleted, or its node was lost)"))
    failure = gang_failure(failures)
    if failure is not None:
        return _after_failure(b, spec, failure, live)

    stragglers = _stragglers(b, spec, live)
    if stragglers:
        b.plan.delete_pods += stragglers
        b.plan.delete_grace = QUICK_STOP_SECONDS  # nothing left to save: the trainer committed and exported
    if len(live) == spec.resources.nodes and (stragglers or all(_succeeded(p) for p in live)):
        early = obs.status.evaluation.stopped_early if obs.status.evaluation else None
        if early is not None:  # the trainer ended training early and said why
            message = f"stopped early after step {early.step}: {early.message}"
            b.event("Normal", REASON_EARLY_STOPPED, message)
            return b.finish(Phase.SUCCEEDED, REASON_EARLY_STOPPED, message)
        message = f"all {spec.resources.nodes} workers completed"
        if stragglers:
            message = (f"training complete; {', '.join(stragglers)} still running {EXIT_GRACE_SECONDS:.0f} s "
                       f"after another worker completed, deleted")
        b.event("Normal", REASON_TRAINING_COMPLETE, message)
        return b.finish(Phase.SUCCEEDED, REASON_TRAINING_COMPLETE, message)

    if not b.launched:
        b.plan.ensure_children = True
        if stale:
            # Same names as the new workers: wait until the old ones are gone.
            b.plan.requeue_after = _sooner(b.plan.requeue_after, POLL_SECONDS)
            return b.finish(Phase.RESTARTING, REASON_RESTARTING,
                            f"waiting for {len(stale)} worker(s) of the previous attempt to terminate")
        b.plan.create_ranks = sorted(set(range(spec.resources.nodes)) - present)
        # The job's first workers: on its first pass, or on the pass that recorded the preflight's verdict.
        if b.plan.create_ranks and (b.old_phase is None or b.preflight is not obs.status.preflight):
            b.event("Normal", REASON_CREATING_WORKERS,
                    f"creating {spec.resources.nodes} worker pod(s) x {spec.resources.processes_per_node} process(es)")
        b.launched = True

    ready = sum(_is_ready(p) for p in live)
    if ready == spec.resources.nodes:
        hang = _silent_too_long(b, spec)
        if hang is not None:
            return _after_failure(b, spec, hang, live)
        message = f"all {ready} workers running (attempt {b.attempt})"
        if b.old_phase != Phase.RUNNING:
            b.event("Normal", REASON_WORKERS_RUNNING, message)
        return b.finish(Phase.RUNNING, REASON_WORKERS_RUNNING, message, ready)
    b.plan.requeue_after = _sooner(b.plan.requeue_after, POLL_SECONDS)
    if b.old_phase == Phase.RUNNING:
        return b.finish(Phase.RUNNING, REASON_WORKERS_RUNNING,
                        f"{ready}/{spec.resources.nodes} workers ready", ready)
    phase = Phase.RESTARTING if b.attempt > 1 else Phase.PENDING
    reason = REASON_RESTARTING if b.attempt > 1 else REASON_WAITING_FOR_WORKERS
    waiting = _waiting_reason(live)
    message = f"waiting for workers: {ready}/{spec.resources.nodes} ready (attempt {b.attempt})" + waiting
    # Since when the job has been waiting for this attempt's workers (Reconciling turned True).
    reconciling = obs.status.condition(CONDITION_RECONCILING)
    since = reconciling.last_transition_time if reconciling is not None and reconciling.status == "True" else obs.now
    if b.preflight is not None and b.preflight.completed_at is not None:
        since = max(since, b.preflight.completed_at)  # the workers were created when the preflight passed
    limit = spec.run_policy.startup_deadline_seconds
    late = (obs.now - since).total_seconds() - limit
    if late >= 0:
        message = (f"workers not running {limit} s (spec.runPolicy.startupDeadlineSeconds) after attempt "
                   f"{b.attempt} began: {ready}/{spec.resources.nodes} ready" + waiting)
        stalled = obs.status.condition(CONDITION_STALLED)
        if stalled is None or stalled.status != "True" or stalled.reason != REASON_WORKERS_NOT_STARTED:
            b.event("Warning", REASON_WORKERS_NOT_STARTED, message)
        return b.finish(phase, REASON_WORKERS_NOT_STARTED, message, ready, stalled=True)
    b.plan.requeue_after = _sooner(b.plan.requeue_after, -late)
    return b.finish(phase, reason, message, ready)


def _is_preflight(pod: Manifest) -> bool:
    return pod["metadata"].get("labels", {}).get("app.kubernetes.io/component") == PREFLIGHT_COMPONENT


def _passed(preflight: PreflightStatus | None) -> bool:
    return preflight is not None and preflight.result == "Succeeded"


def _termination(pod: Manifest) -> Manifest:
    for status in pod.get("status", {}).get("containerStatuses") or ():
        if status.get("name") == TRAINER_CONTAINER:
            return dict((status.get("state") or {}).get("terminated") or {})
    return {}


def _preflight(b: _Builder, preflights: list[Manifest]) -> Plan | None:
    """Before the first worker: run the preflight pod and wait for its verdict. A Plan while it runs or
    when it failed (the job fails, no worker is ever created); None once it passed (b.preflight holds its
    report), and this pass goes on to create the workers."""
    obs = b.obs
    pod = next((p for p in preflights if not p["metadata"].get("deletionTimestamp")), None)
    if pod is None:
        if preflights:  # the last one is still going away
            b.plan.requeue_after = _sooner(b.plan.requeue_after, POLL_SECONDS)
            return b.finish(Phase.PENDING, REASON_PREFLIGHT, "preflight: waiting for the previous preflight pod to go")
        b.plan.create_preflight = True
        if b.old_phase is None:
            b.event("Normal", REASON_PREFLIGHT, f"running the preflight in pod {obs.name}-preflight (no GPU)")
        b.plan.requeue_after = _sooner(b.plan.requeue_after, POLL_SECONDS)
        return b.finish(Phase.PENDING, REASON_PREFLIGHT,
                        "preflight: checking storage, the model and every record on CPU before requesting GPUs")
    name = pod["metadata"]["name"]
    phase = pod.get("status", {}).get("phase")
    terminated = _termination(pod)
    text = (terminated.get("message") or "").strip()
    if phase == "Succeeded":
        try:
            report = PreflightStatus.model_validate_json(text)
        except ValueError:
            report = None
        if report is not None and report.result == "Succeeded":
            b.preflight = report.model_copy(update={"completed_at": obs.now})
            b.event("Normal", REASON_PREFLIGHT, report.message or "preflight passed")
            return None
        return _preflight_failed(b, f"preflight pod {name} completed without a report; see `kubectl logs {name}`")
    if phase == "Failed":
        failure = classify(pod)
        if failure is not None and failure.cause is Cause.INFRASTRUCTURE and not terminated:
            # Evicted or its node lost before it could say anything: run it again.
            b.plan.delete_pods.append(name)
            b.plan.requeue_after = _sooner(b.plan.requeue_after, POLL_SECONDS)
            return b.finish(Phase.PENDING, REASON_PREFLIGHT, f"preflight pod {name}: {failure.message}; running it again")
        if terminated.get("reason") == "OOMKilled":
            return _preflight_failed(b, f"preflight pod {name} ran out of memory (OOMKilled); raise "
                                        "spec.preflight.resources.limits.memory")
        last = text.splitlines()[-1] if text else (failure.message if failure else "no reason given")
        return _preflight_failed(b, last)
    b.plan.requeue_after = _sooner(b.plan.requeue_after, POLL_SECONDS)
    return b.finish(Phase.PENDING, REASON_PREFLIGHT, f"preflight running in pod {name}" + _waiting_reason([pod]))


def _preflight_failed(b: _Builder, message: str) -> Plan:
    b.preflight = PreflightStatus(result="Failed", message=message[:4096], completed_at=b.obs.now)
    b.event("Warning", REASON_PREFLIGHT_FAILED, message)
    return b.finish(Phase.FAILED, REASON_PREFLIGHT_FAILED, f"preflight failed: {message}")


def _past_deadline(b: _Builder, spec: FineTuneJobSpec, pods: list[Manifest]) -> Plan | None:
    """Failed, and `pods` deleted, once spec.runPolicy.activeDeadlineSeconds have passed since the start;
    else None (and when to look again)."""
    deadline = spec.run_policy.active_deadline_seconds
    if deadline is None:
        return None
    remaining = (b.start_time + timedelta(seconds=deadline) - b.obs.now).total_seconds()
    if remaining > 0:
        b.plan.requeue_after = _sooner(b.plan.requeue_after, remaining)
        return None
    message = f"exceeded spec.runPolicy.activeDeadlineSeconds ({deadline}s)"
    b.plan.delete_pods += [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")]
    b.event("Warning", REASON_DEADLINE_EXCEEDED, message)
    return b.finish(Phase.FAILED, REASON_DEADLINE_EXCEEDED, message)


def _holding(pods: list[Manifest]) -> bool:
    """Whether any of these pods may still hold its node's resources (it has not finished)."""
    return not all(map(_finished, pods))


def _admission(b: _Builder, queue: QueueState, live: list[Manifest]) -> Plan | None:
    """Kueue's say over a job with a queue: a Plan that keeps it Queued (creating its Workload,
    stopping the workers of an admission that was taken back, returning its quota), or None
    when it is admitted and runs as any other job."""
    obs, wl = b.obs, queue.workload
    if wl is None:
        if queue.kueue_missing:
            b.plan.requeue_after = POLL_SECONDS
            return _queued(b, REASON_KUEUE_MISSING,
                           f"waiting for Kueue, which is not installed: the job has the label "
                           f"{KUEUE_QUEUE_LABEL}={queue.queue} but the API server does not serve "
                           f"{KUEUE_GROUP}/{KUEUE_VERSION} Workloads; install Kueue or remove the label")
        if queue.problem:
            b.plan.requeue_after = POLL_SECONDS
            return _queued(b, REASON_QUEUED, f"cannot queue the job: {queue.problem}")
        b.plan.ensure_workload = True
        return _queued(b, REASON_QUEUED, f"queued in LocalQueue {queue.queue}: waiting for Kueue to admit its Workload")
    if not wl.active:
        b.plan.workload_active = True
    if wl.admitted and wl.evicted is None:
        if b.old_phase == Phase.QUEUED:
            flavors = f" (flavors: {', '.join(wl.flavors)})" if wl.flavors else ""
            b.event("Normal", REASON_ADMITTED, f"admitted by Kueue to ClusterQueue {wl.cluster_queue}{flavors}")
        return None
    running = [p for p in live if not p["metadata"].get("deletionTimestamp")]
    why = f"{wl.evicted[0]}: {wl.evicted[1]}" if wl.evicted else "admission withdrawn"
    if b.launched or running:
        # Pre-empted, or its quota reclaimed: the workers stop with their grace period, in which
        # they commit a checkpoint at the step they were running; the job resumes from it on
        # readmission. Counted as an infrastructure restart.
        b.plan.delete_pods += [p["metadata"]["name"] for p in running]
        if b.launched:
            b.restarts[Cause.INFRASTRUCTURE.value] += 1
            b.plan.restart_cause = Cause.INFRASTRUCTURE
            b.launched = False
        message = (f"evicted by Kueue ({why}); stopping {len(running)} worker(s) gracefully: they commit "
                   f"a checkpoint at their current step, and the job resumes from it when admitted again")
        b.event("Warning", REASON_EVICTED, message)
        b.plan.requeue_after = POLL_SECONDS
        return _queued(b, REASON_EVICTED, message)
    if _holding(obs.pods):
        b.plan.requeue_after = POLL_SECONDS
        return _queued(b, REASON_EVICTED, f"evicted by Kueue ({why}); waiting for the workers to stop")
    if wl.quota_reserved and wl.evicted is not None:
        b.plan.release_quota = wl.evicted
    waiting = wl.waiting or "waiting for admission"
    return _queued(b, REASON_QUEUED, f"queued in LocalQueue {queue.queue}: {waiting}")


def _queued(b: _Builder, reason: str, message: str) -> Plan:
    """Phase Queued: an Event when the job becomes Queued or Kueue's reason changes."""
    old = b.obs.status
    if reason != REASON_EVICTED and (b.old_phase != Phase.QUEUED or old.message != message):
        b.event("Normal", reason, message)
    return b.finish(Phase.QUEUED, reason, message)


def _stalled_by_hang(status: FineTuneJobStatus) -> bool:
    stalled = status.condition(CONDITION_STALLED)
    return stalled is not None and stalled.status == "True" and stalled.reason == REASON_HANG


def _silent_too_long(b: _Builder, spec: FineTuneJobSpec) -> WorkerFailure | None:
    """The operator's own hang check, for when no trainer watchdog can fire: all workers run, yet no
    progress was reported for the deadline plus HANG_MARGIN_SECONDS. Sets when to look again."""
    obs, policy = b.obs, spec.run_policy
    ready = obs.status.condition(CONDITION_READY)
    running_since = ready.last_transition_time if ready is not None and ready.status == "True" else obs.now
    progress = obs.status.progress
    # After the last step too: rank 0 reports every interval while it exports (its heartbeat), however long
    # the export retries storage; only a frozen or vanished rank 0 goes silent.
    if progress is not None and progress.step is not None and progress.updated_at is not None \
            and progress.updated_at > running_since:
        last, limit, what = progress.updated_at, policy.progress_deadline_seconds, "progressDeadlineSeconds"
    else:  # nothing reported by this attempt yet
        last, limit, what = running_since, policy.startup_deadline_seconds, "startupDeadlineSeconds"
    silent = (obs.now - last).total_seconds()
    remaining = limit + HANG_MARGIN_SECONDS - silent
    if remaining > 0:
        b.plan.requeue_after = _sooner(b.plan.requeue_after, remaining)
        return None
    return WorkerFailure(Cause.HANG, obs.name, REASON_HANG,
                         f"no progress reported for {silent:.0f} s (spec.runPolicy.{what} is {limit} s, "
                         f"plus {HANG_MARGIN_SECONDS:.0f} s for the trainer's own watchdog)")


def _being_replaced(pod: Manifest, attempt: int) -> bool:
    return _attempt(pod) != attempt


def _sooner(current: float | None, candidate: float) -> float:
    return candidate if current is None else min(current, candidate)


# Restart budgets: the cause, its limit's field, the reason of running out, what the restarts follow.
_BUDGETS = {
    Cause.APPLICATION: ("backoff_limit", REASON_BACKOFF_LIMIT_EXCEEDED, "backoff limit", "trainer failures"),
    Cause.HANG: ("hang_restart_limit", REASON_HANG_LIMIT_EXCEEDED, "hang restart limit", "hangs"),
}


def _after_failure(b: _Builder, spec: FineTuneJobSpec, failure: WorkerFailure, live: list[Manifest]) -> Plan:
    budget = _BUDGETS.get(failure.cause)
    limit = getattr(spec.run_policy, budget[0]) if budget else 0
    if failure.cause is Cause.HANG:
        b.event("Warning", REASON_HANG, failure.message)
    if failure.cause is not Cause.INFRASTRUCTURE:
        # A gang that failed or hung cannot agree on a step to commit: its survivors (waiting in a
        # collective, or frozen) would only hold their GPUs for the grace period.
        b.plan.delete_grace = QUICK_STOP_SECONDS
    if budget is not None and b.restarts[failure.cause.value] >= limit:
        # The end: stop the workers still running, keep the finished ones for `kubectl logs`.
        b.plan.delete_pods += [p["metadata"]["name"] for p in live if not p["metadata"].get("deletionTimestamp")
                               and not _finished(p)]
        _, reason, name, after = budget
        message = f"{name} reached ({limit} restart(s) after {after}); last: {failure.message}"
        b.event("Warning", reason, message)
        return b.finish(Phase.FAILED, reason, message)
    # A restart replaces every worker: the new ones take the same names.
    b.plan.delete_pods += [p["metadata"]["name"] for p in live if not p["metadata"].get("deletionTimestamp")]
    b.restarts[failure.cause.value] += 1
    b.launched = False
    b.plan.restart_cause = failure.cause
    b.plan.requeue_after = _sooner(b.plan.requeue_after, POLL_SECONDS)
    left = f"; {limit - b.restarts[failure.cause.value]} {failure.cause.value} restart(s) left" if budget else ""
    message = f"restarting all workers (attempt {b.attempt}) after {failure.cause.value} failure: {failure.message}{left}"
    b.event("Warning", REASON_RESTARTING, message)
    hang = failure.cause is Cause.HANG
    return b.finish(Phase.RESTARTING, REASON_HANG if hang else REASON_RESTARTING, message, stalled=hang)
