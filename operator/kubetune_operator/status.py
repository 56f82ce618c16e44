"""The operator's share of a FineTuneJob's status, as the typed model.

Two writers share one status: the operator owns the lifecycle (phase,
conditions, times, workers, restarts, message) and rank 0 of the trainer owns
what only it knows (progress, progressText, checkpoints, evaluation, parameters,
output). Each writes only its own fields with a merge patch, so neither can undo
the other's. This module says which fields are whose, reads a stored status
leniently, builds the conditions and decides whether a write is needed at all;
all of it pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pydantic import ValidationError

from kubetune_api import Condition, FineTuneJobStatus, Manifest, Phase
from kubetune_api.constants import (
    CONDITION_FAILED,
    CONDITION_QUEUED,
    CONDITION_READY,
    CONDITION_RECONCILING,
    CONDITION_STALLED,
    CONDITION_SUCCEEDED,
)
from kubetune_api.status import ConditionStatus

# Field names of FineTuneJobStatus; together the two cover every field (a test checks).
OPERATOR_FIELDS = frozenset({
    "observed_generation", "phase", "conditions", "start_time", "completion_time",
    "workers", "restarts", "preflight", "message",
})
TRAINER_FIELDS = frozenset({"progress", "progress_text", "checkpoints", "evaluation", "parameters", "output"})


def read_status(raw: object) -> FineTuneJobStatus:
    """A job's .status as stored, typed; never fails.

    Unknown keys are ignored (the model does that: a newer writer may add
    some). A field that does not validate, which the CRD's schema should
    already have refused, reads as unset: the operator then rewrites its own
    such fields instead of failing every pass over the job.
    """
    if not isinstance(raw, Mapping):
        return FineTuneJobStatus()
    data = dict(raw)
    while True:
        try:
            return FineTuneJobStatus.model_validate(data)
        except ValidationError as e:
            bad = {err["loc"][0] for err in e.errors() if err["loc"]} & data.keys()
            if not bad:
                return FineTuneJobStatus()
            for key in bad:
                del data[key]


def operator_part(status: FineTuneJobStatus) -> FineTuneJobStatus:
    """`status` with the trainer's fields unset."""
    return status.model_copy(update=dict.fromkeys(TRAINER_FIELDS))


def needs_write(stored: FineTuneJobStatus, desired: FineTuneJobStatus) -> bool:
    """Whether the operator's fields as stored differ from what it wants them to be."""
    return operator_part(stored) != operator_part(desired)


def status_patch(desired: FineTuneJobStatus) -> Manifest:
    """The merge patch of .status that makes the operator's fields exactly `desired`'s.

    Set fields are written as `to_manifest()` writes them, the operator's unset
    ones are removed (null), and the trainer's are not mentioned, so they keep
    whatever the trainer last wrote.
    """
    fields = FineTuneJobStatus.model_fields
    patch: Manifest = {fields[name].alias or name: None for name in sorted(OPERATOR_FIELDS)}
    patch.update(operator_part(desired).to_manifest())
    return patch


def condition(previous: FineTuneJobStatus, type_: str, status: ConditionStatus, reason: str,
              message: str, now: datetime, generation: int) -> Condition:
    """A metav1.Condition: its lastTransitionTime moves only when its status changes."""
    old = previous.condition(type_)
    since = old.last_transition_time if old is not None and old.status == status else now
    return Condition(type=type_, status=status, reason=reason, message=message,
                     last_transition_time=since, observed_generation=generation)


def conditions_for(phase: Phase, reason: str, message: str, previous: FineTuneJobStatus,
                   now: datetime, generation: int, stalled: bool = False) -> list[Condition]:
    """kstatus conditions (Ready, Reconciling, Stalled) plus the terminal Succeeded/Failed and, for a
    job under Kueue, Queued;
    `stalled`: not failed, but stuck (a hang, workers that do not start)."""

    def cond(type_: str, true: bool) -> Condition:
        return condition(previous, type_, "True" if true else "False", reason, message, now, generation)

    out = [
        cond(CONDITION_READY, phase == Phase.RUNNING),
        cond(CONDITION_RECONCILING, phase in (Phase.QUEUED, Phase.PENDING, Phase.RESTARTING)),
        cond(CONDITION_STALLED, phase == Phase.FAILED or stalled),
    ]
    if phase == Phase.QUEUED or previous.condition(CONDITION_QUEUED) is not None:
        # A job under Kueue: True while it waits for admission; it stays, False, once admitted.
        out.append(cond(CONDITION_QUEUED, phase == Phase.QUEUED))
    if phase == Phase.SUCCEEDED:
        out.append(cond(CONDITION_SUCCEEDED, True))
    if phase == Phase.FAILED:
        out.append(cond(CONDITION_FAILED, True))
    return out

