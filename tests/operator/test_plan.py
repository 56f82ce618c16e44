"""The operator's decisions as pure functions: failure causes, gang restarts, phases, timers.

No cluster: plain manifests in, a Plan out. The cluster tests show the same
behaviour end to end; these pin down the edge cases that are hard to stage.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from harness import ftj

from kubetune_api import FineTuneJobStatus, RestartsStatus, format_timestamp, parse_spec
from kubetune_operator.failures import Cause, classify, gang_failure
from kubetune_operator.plan import Observed, plan, plan_invalid
from kubetune_operator.status import read_status

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def ts(dt: datetime) -> str:
    return format_timestamp(dt)


def pod(rank: int, attempt: int = 1, phase: str = "Running", ready: bool = True, exit_code: int | None = None,
        message: str = "", reason: str | None = None, deleting: bool = False, disruption: str | None = None,
        job: str = "j") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if exit_code is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {"exitCode": exit_code, "message": message}}}]
    if reason:
        status["reason"] = reason
    if disruption:
        status["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": disruption})
    meta: dict[str, Any] = {"name": f"{job}-worker-{rank}", "uid": f"uid-{rank}-{attempt}",
                            "labels": {"kubetune.io/rank": str(rank), "kubetune.io/attempt": str(attempt)}}
    if deleting:
        meta["deletionTimestamp"] = ts(NOW)
    return {"metadata": meta, "status": status}


def observed(status: dict[str, Any] | FineTuneJobStatus | None = None, pods: list[dict[str, Any]] | None = None,
             now: datetime = NOW) -> Observed:
    typed = status if isinstance(status, FineTuneJobStatus) else read_status(status or {})
    return Observed(name="j", generation=3, status=typed, pods=pods or [], now=now)


def spec(**overrides: Any):  # type: ignore[no-untyped-def]
    return parse_spec(ftj("j", **overrides)["spec"])


def launched(phase: str = "Running", infra: int = 0, app: int = 0, **extra: Any) -> dict[str, Any]:
    return {"phase": phase, "startTime": ts(NOW - timedelta(minutes=5)),
            "restarts": {"infrastructure": infra, "application": app},
            "workers": {"launched": True, "ready": 2, "total": 2}, **extra}


class TestClassify:
    @pytest.mark.parametrize(("p", "cause"), [
        (pod(0), None),
        (pod(0, phase="Succeeded", exit_code=0), None),
        (pod(0, phase="Pending", ready=False), None),
        (pod(0, phase="Failed", exit_code=1, message="Traceback...\nValueError: bad"), Cause.APPLICATION),
        (pod(0, phase="Failed", reason="Evicted"), Cause.INFRASTRUCTURE),
        (pod(0, phase="Failed", exit_code=137, disruption="PreemptionByScheduler"), Cause.INFRASTRUCTURE),
        (pod(0, deleting=True), Cause.INFRASTRUCTURE),
        (pod(0, phase="Failed"), Cause.INFRASTRUCTURE),  # failed before the trainer ran
    ])
    def test_cause(self, p: dict[str, Any], cause: Cause | None) -> None:
        failure = classify(p)
        assert (failure.cause if failure else None) == cause

    def test_application_failure_reports_the_last_line_of_the_termination_message(self) -> None:
        failure = classify(pod(1, phase="Failed", exit_code=2, message="Traceback (most recent call last):\n"
                                                                        "kubetune: dataset train.jsonl line 7: not JSON"))
        assert failure is not None
        assert failure.message == "worker j-worker-1 exited with code 2: kubetune: dataset train.jsonl line 7: not JSON"

    def test_infrastructure_cause_wins_over_the_peers_it_broke(self) -> None:
        evicted = classify(pod(0, phase="Failed", reason="Evicted"))
        broken_peer = classify(pod(1, phase="Failed", exit_code=1, message="NCCL error: peer lost"))
        assert evicted and broken_peer
        assert gang_failure([broken_peer, evicted]) == evicted


class TestPlan:
    def test_new_job_creates_children_and_every_worker(self) -> None:
        p = plan(spec(), observed())
        assert p.ensure_children and p.create_ranks == [0, 1] and p.attempt == 1
        assert p.status.phase == "Pending" and p.status.workers.launched is True
        assert p.status.observed_generation == 3
        assert [e.reason for e in p.events] == ["CreatingWorkers"]

    def test_all_ready_is_running_with_kstatus_conditions(self) -> None:
        p = plan(spec(), observed(launched(phase="Pending"), [pod(0), pod(1)]))
        assert p.status.phase == "Running" and p.status.workers.ready == 2
        conds = {c.type: c.status for c in p.status.conditions}
        assert conds == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
        assert not p.create_ranks and not p.delete_pods

    def test_condition_transition_time_moves_only_with_its_status(self) -> None:
        first = plan(spec(), observed(launched(phase="Pending"), [pod(0), pod(1)]))
        later = plan(spec(), observed(first.status, [pod(0), pod(1)], now=NOW + timedelta(hours=1)))
        assert first.status.conditions == later.status.conditions

    def test_lost_worker_restarts_the_gang_as_infrastructure(self) -> None:
        p = plan(spec(runPolicy={"backoffLimit": 0}), observed(launched(), [pod(0)]))
        assert p.status.restarts == RestartsStatus(infrastructure=1, application=0)
        assert p.status.phase == "Restarting" and p.status.workers.launched is False
        assert p.delete_pods == ["j-worker-0"] and not p.create_ranks
        assert p.restart_cause is Cause.INFRASTRUCTURE

    def test_missing_worker_before_launch_is_created_not_counted(self) -> None:
        # The operator died between creating worker 0 and worker 1.
        status = {**launched(phase="Pending"), "workers": {"launched": False}}
        p = plan(spec(), observed(status, [pod(0)]))
        assert p.create_ranks == [1] and p.status.restarts == RestartsStatus(infrastructure=0, application=0)

    def test_old_attempt_workers_are_deleted_before_new_ones_are_created(self) -> None:
        status = {**launched(phase="Restarting", infra=1), "workers": {"launched": False}}
        p = plan(spec(), observed(status, [pod(0, attempt=1), pod(1, attempt=1, deleting=True)]))
        assert p.delete_pods == ["j-worker-0"] and not p.create_ranks
        assert p.status.restarts.infrastructure == 1, "deleting them is not another failure"
        gone = plan(spec(), observed(status, []))
        assert gone.create_ranks == [0, 1] and gone.attempt == 2

    def test_application_failure_spends_backoff_then_fails(self) -> None:
        def failed(attempt: int) -> list[dict[str, Any]]:
            return [pod(0, attempt, phase="Failed", exit_code=1, message="boom"), pod(1, attempt)]

        p = plan(spec(runPolicy={"backoffLimit": 2}), observed(launched(app=1), failed(attempt=2)))
        assert p.status.restarts.application == 2 and p.status.phase == "Restarting"
        assert p.attempt == 3
        last = plan(spec(runPolicy={"backoffLimit": 2}), observed(launched(app=2), failed(attempt=3)))
        assert last.status.phase == "Failed"
        assert {c.type: c.reason for c in last.status.conditions}["Failed"] == "BackoffLimitExceeded"
        assert "boom" in last.status.message and last.delete_pods == ["j-worker-1"]
        assert ts(last.status.completion_time) == ts(NOW)

    def test_every_worker_succeeded_is_success(self) -> None:
        done = [pod(0, phase="Succeeded", exit_code=0), pod(1, phase="Succeeded", exit_code=0)]
        p = plan(spec(), observed(launched(), done))
        assert p.status.phase == "Succeeded" and not p.delete_pods

    def test_a_job_the_trainer_stopped_early_succeeds_with_reason_early_stopped(self) -> None:
        done = [pod(0, phase="Succeeded", exit_code=0), pod(1, phase="Succeeded", exit_code=0)]
        why = "f1_macro did not improve on 0.871 (step 300) for 2 evaluations: 0.869 (400), 0.862 (500)"
        stored = launched(evaluation={"metric": "f1_macro", "stoppedEarly": {"step": 500, "message": why}})
        p = plan(spec(), observed(stored, done))
        assert p.status.phase == "Succeeded"
        succeeded = p.status.condition("Succeeded")
        assert succeeded is not None and succeeded.reason == "EarlyStopped"
        assert succeeded.message == f"stopped early after step 500: {why}"
        assert [(e.reason, e.message) for e in p.events] == [("EarlyStopped", succeeded.message)]

    def test_suspend_deletes_workers_and_resume_restarts_the_deadline_clock(self) -> None:
        p = plan(spec(runPolicy={"suspend": True}), observed(launched(), [pod(0), pod(1)]))
        assert p.status.phase == "Suspended" and sorted(p.delete_pods) == ["j-worker-0", "j-worker-1"]
        assert p.status.workers.launched is False
        resumed = plan(spec(), observed(p.status, [], now=NOW + timedelta(hours=2)))
        assert resumed.create_ranks == [0, 1] and ts(resumed.status.start_time) == ts(NOW + timedelta(hours=2))
        assert [e.reason for e in resumed.events] == ["Resumed"]

    def test_deadline(self) -> None:
        s = spec(runPolicy={"activeDeadlineSeconds": 600})
        early = plan(s, observed(launched(), [pod(0), pod(1)]))
        assert early.status.phase == "Running" and early.requeue_after == pytest.approx(300)
        late = plan(s, observed(launched(), [pod(0), pod(1)], now=NOW + timedelta(minutes=6)))
        assert late.status.phase == "Failed" and sorted(late.delete_pods) == ["j-worker-0", "j-worker-1"]

    def test_the_pass_that_finishes_a_job_schedules_its_ttl(self) -> None:
        done = [pod(0, phase="Succeeded", exit_code=0), pod(1, phase="Succeeded", exit_code=0)]
        p = plan(spec(runPolicy={"ttlSecondsAfterFinished": 60}), observed(launched(), done))
        assert p.status.phase == "Succeeded" and p.requeue_after == pytest.approx(60)

    def test_ttl_after_finished(self) -> None:
        s = spec(runPolicy={"ttlSecondsAfterFinished": 60})
        done = {**launched(phase="Succeeded"), "completionTime": ts(NOW)}
        assert plan(s, observed(done, now=NOW + timedelta(seconds=30))).requeue_after == pytest.approx(30)
        assert plan(s, observed(done, now=NOW + timedelta(seconds=61))).delete_job

    def test_unschedulable_workers_say_why(self) -> None:
        waiting = pod(1, phase="Pending", ready=False)
        waiting["status"]["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."})
        p = plan(spec(), observed(launched(phase="Pending"), [pod(0), waiting]))
        assert p.status.phase == "Pending"
        assert "Insufficient nvidia.com/gpu" in p.status.message

    def test_invalid_spec_fails_without_workers(self) -> None:
        p = plan_invalid(observed(), "spec.training.microBatchSize must be >= 1 (got 0)")
        assert p.status.phase == "Failed" and not p.create_ranks and not p.ensure_children
        assert {c.type: c.reason for c in p.status.conditions}["Failed"] == "InvalidSpec"
