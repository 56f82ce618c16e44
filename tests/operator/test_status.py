"""The operator's share of the status: whose fields are whose, lenient reading, one write per change.

Pure, like test_plan.py: a stored status in, the typed model and the merge
patch the operator would send out. What the API server makes of the patch is
test_reconcile.py's, against the real one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from harness import ftj

from kubetune_api import FineTuneJobStatus, Phase, parse_spec
from kubetune_operator.plan import Observed, plan
from kubetune_operator.status import (
    OPERATOR_FIELDS,
    TRAINER_FIELDS,
    condition,
    needs_write,
    operator_part,
    read_status,
    status_patch,
)

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)

TRAINER_STATUS: dict[str, Any] = {
    "progress": {"step": 40, "totalSteps": 100, "loss": 1.5, "updatedAt": "2026-11-21T11:59:50Z"},
    "progressText": "40/100",
    "checkpoints": {"latest": {"step": 40, "uri": "s3://ckpt/j/step-00000040/"}, "committed": 1},
    "output": {"uri": "s3://models/j/"},
}


def pending_worker(rank: int) -> dict[str, Any]:
    labels = {"kubetune.io/rank": str(rank), "kubetune.io/attempt": "1"}
    return {"metadata": {"name": f"j-worker-{rank}", "uid": f"uid-{rank}", "labels": labels},
            "status": {"phase": "Pending"}}


def first_plan(stored: dict[str, Any], now: datetime = NOW) -> FineTuneJobStatus:
    """The status a pass decides for a 2-worker job whose workers exist and are still pending."""
    spec = parse_spec(ftj("j")["spec"])
    pods = [pending_worker(0), pending_worker(1)]
    return plan(spec, Observed(name="j", generation=1, status=read_status(stored), pods=pods, now=now)).status


def test_every_status_field_has_one_owner() -> None:
    assert set(FineTuneJobStatus.model_fields) == OPERATOR_FIELDS | TRAINER_FIELDS
    assert not OPERATOR_FIELDS & TRAINER_FIELDS


def test_reading_is_lenient() -> None:
    assert read_status(None) == FineTuneJobStatus()
    assert read_status({"phase": "Running", "someNewField": {"x": 1}}).phase == Phase.RUNNING
    # A hand-edited field that does not validate reads as unset; the rest is kept.
    broken = read_status({"phase": "Running", "restarts": {"application": -1}, "startTime": "yesterday"})
    assert broken.phase == Phase.RUNNING and broken.restarts is None and broken.start_time is None


def test_the_plan_sets_only_operator_fields() -> None:
    desired = first_plan(TRAINER_STATUS)
    assert all(getattr(desired, name) is None for name in TRAINER_FIELDS)
    assert desired == operator_part(desired)


def test_the_patch_leaves_the_trainers_fields_alone() -> None:
    patch = status_patch(first_plan(TRAINER_STATUS))
    assert {"progress", "progressText", "checkpoints", "output"}.isdisjoint(patch)
    assert patch["phase"] == "Pending" and patch["workers"]["launched"] is True
    assert patch["completionTime"] is None, "the operator's unset fields are removed, not left behind"


def test_one_write_then_none_while_nothing_changes() -> None:
    stored: dict[str, Any] = dict(TRAINER_STATUS)
    desired = first_plan(stored)
    assert needs_write(read_status(stored), desired)
    stored.update(desired.to_manifest())  # the job after the write
    # The same decision ten minutes later (within the start-up deadline), with the trainer reporting
    # in between: nothing to write.
    stored["progress"] = {**stored["progress"], "step": 90}
    again = first_plan(stored, now=NOW + timedelta(minutes=10))
    assert again == desired
    assert not needs_write(read_status(stored), again)


def test_a_condition_moves_its_transition_time_only_with_its_status() -> None:
    before = FineTuneJobStatus(conditions=[condition(FineTuneJobStatus(), "Ready", "False", "A", "", NOW, 1)])
    later = NOW + timedelta(minutes=5)
    same = condition(before, "Ready", "False", "B", "other message", later, 2)
    assert same.last_transition_time == NOW and same.reason == "B" and same.observed_generation == 2
    flipped = condition(before, "Ready", "True", "B", "", later, 2)
    assert flipped.last_transition_time == later
