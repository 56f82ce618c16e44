"""Why a worker pod failed, and whose fault it was.

A collective cannot survive the loss of a rank, so any failed worker fails the
gang. What matters is the cause: the infrastructure (a node lost, a pod
evicted, pre-empted or deleted by someone else) restarts the gang for free;
the application (the trainer exiting non-zero) spends runPolicy.backoffLimit; a
hang (a trainer whose watchdog found it stuck, or a job whose progress stopped)
spends runPolicy.hangRestartLimit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kubetune_api import Manifest
from kubetune_api.constants import (
    HANG_MESSAGE_PREFIX,
    REASON_HANG,
    REASON_WORKER_STOPPED,
    STOPPED_MESSAGE_PREFIX,
)

from .workers import TRAINER_CONTAINER

# Pod.status.reason values set by the kubelet or the node lifecycle when the
# pod, not the program in it, was the victim.
INFRASTRUCTURE_POD_REASONS = frozenset({
    "Evicted", "Preempting", "NodeLost", "Shutdown", "Terminated", "NodeShutdown",
    "NodeAffinity", "OutOfcpu", "OutOfmemory", "OutOfpods", "UnexpectedAdmissionError",
})
# The DisruptionTarget condition says the pod is being, or was, disrupted by
# the system (pre-emption, the eviction API, a taint, the kubelet, pod GC).
DISRUPTION_CONDITION = "DisruptionTarget"


class Cause(enum.StrEnum):
    INFRASTRUCTURE = "infrastructure"
    APPLICATION = "application"
    HANG = "hang"


@dataclass(frozen=True)
class WorkerFailure:
    cause: Cause
    worker: str
    reason: str  # CamelCase, for events
    message: str  # one line a person can act on


def _trainer_termination(pod: Manifest) -> Manifest | None:
    for status in pod.get("status", {}).get("containerStatuses") or ():
        if status.get("name") == TRAINER_CONTAINER:
            terminated = (status.get("state") or {}).get("terminated")
            if terminated:
                return dict(terminated)
    return None


def _disruption(pod: Manifest) -> Manifest | None:
    for cond in pod.get("status", {}).get("conditions") or ():
        if cond.get("type") == DISRUPTION_CONDITION and cond.get("status") == "True":
            return dict(cond)
    return None


def classify(pod: Manifest) -> WorkerFailure | None:
    """The failure a worker pod shows, or None while it is healthy or done."""
    name = pod["metadata"]["name"]
    if pod["metadata"].get("deletionTimestamp"):
        # The operator deletes workers only after it has moved to a new attempt
        # (so they are no longer current); a current worker being deleted was
        # deleted by someone or something else.
        disruption = _disruption(pod)
        why = f" ({disruption.get('reason')})" if disruption else ""
        return WorkerFailure(Cause.INFRASTRUCTURE, name, "WorkerDeleted", f"worker {name} was deleted{why}")
    status = pod.get("status", {})
    if status.get("phase") != "Failed":
        return None
    disruption = _disruption(pod)
    pod_reason = status.get("reason") or ""
    if disruption or pod_reason in INFRASTRUCTURE_POD_REASONS:
        reason = pod_reason or (disruption or {}).get("reason") or "Disrupted"
        detail = status.get("message") or (disruption or {}).get("message") or ""
        return WorkerFailure(Cause.INFRASTRUCTURE, name, reason,
                             f"worker {name}: {reason}" + (f": {detail}" if detail else ""))
    terminated = _trainer_termination(pod)
    if terminated is not None and terminated.get("exitCode", 0) != 0:
        code = terminated["exitCode"]
        text = (terminated.get("message") or "").strip()
        # The trainer writes one line; with FallbackToLogsOnError it may be a log tail: keep the last line.
        last_line = text.splitlines()[-1] if text else (terminated.get("reason") or "")
        if last_line.startswith(HANG_MESSAGE_PREFIX):  # the trainer's watchdog: "Hang: no step for ..."
            return WorkerFailure(Cause.HANG, name, REASON_HANG, f"worker {name}: {last_line}")
        if last_line.startswith(STOPPED_MESSAGE_PREFIX):  # SIGTERM, a step finished and committed
            return WorkerFailure(Cause.INFRASTRUCTURE, name, REASON_WORKER_STOPPED, f"worker {name}: {last_line}")
        return WorkerFailure(Cause.APPLICATION, name, "TrainerFailed",
                             f"worker {name} exited with code {code}" + (f": {last_line}" if last_line else ""))
    return WorkerFailure(Cause.INFRASTRUCTURE, name, pod_reason or "PodFailed",
                         f"worker {name} failed: {status.get('message') or pod_reason or 'no reason given'}")


def gang_failure(failures: list[WorkerFailure]) -> WorkerFailure | None:
    """The failure that explains the gang's.

    When one rank is lost, its peers fail too (their collectives break), often
    with a non-zero exit: an infrastructure failure among them is the cause,
    and the application failures its consequence. Likewise a hang explains the
    peers that failed while waiting for the hung rank.
    """
    for cause in (Cause.INFRASTRUCTURE, Cause.HANG, Cause.APPLICATION):
        for failure in failures:
            if failure.cause is cause:
                return failure
    return None
