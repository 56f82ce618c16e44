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
from kubetune_operator.plan import (
    EXIT_GRACE_SECONDS,
    HANG_MARGIN_SECONDS,
    Observed,
    plan,
    plan_invalid,
)
from kubetune_operator.status import read_status

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def ts(dt: datetime) -> str:
    return format_timestamp(dt)


def pod(rank: int, attempt: int = 1, phase: str = "Running", ready: bool = True, exit_code: int | None = None,
        message: str = "", reason: str | None = None, deleting: bool = False, disruption: str | None = None,
        job: str = "j", finished_at: datetime = NOW) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if exit_code is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {
            "exitCode": exit_code, "message": message, "finishedAt": ts(finished_at)}}}]
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
        later = plan(spec(), observed(first.status, [pod(0), pod(1)], now=NOW + timedelta(minutes=10)))
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

    def test_a_worker_still_running_after_another_completed_gets_a_grace_then_is_deleted(self) -> None:
        # A trainer exits 0 only after the final barrier: a rank still running is shutting down, or
        # stuck there (a stopped process), and the job must not wait for it forever.
        def workers(completed_ago: float) -> list[dict[str, Any]]:
            return [pod(0, phase="Succeeded", exit_code=0, finished_at=NOW - timedelta(seconds=completed_ago)),
                    pod(1)]

        waiting = plan(spec(), observed(launched(), workers(completed_ago=20)))
        assert waiting.status.phase == "Running" and not waiting.delete_pods
        assert waiting.requeue_after is not None and waiting.requeue_after <= EXIT_GRACE_SECONDS - 20

        done = plan(spec(), observed(launched(), workers(completed_ago=EXIT_GRACE_SECONDS + 1)))
        assert done.status.phase == "Succeeded"
        assert done.delete_pods == ["j-worker-1"] and done.delete_grace == 1
        assert done.status.message == ("training complete; j-worker-1 still running 120 s after another "
                                       "worker completed, deleted")
        assert [e.reason for e in done.events] == ["TrainingComplete"]

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


HANG_LINE = ("Hang: no step for 600 s at step 12 (rank 0, waiting in torch.distributed.distributed_c10d.all_reduce); "
             "stacks in s3://b/out/checkpoints/diagnostics/attempt-1/rank-0.txt")


def hung(rank: int = 0, attempt: int = 1) -> dict[str, Any]:
    """A worker whose trainer's watchdog ended it."""
    return pod(rank, attempt, phase="Failed", exit_code=3, message=HANG_LINE)


def conditions(p: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in p.status.conditions}


class TestHang:
    def test_the_watchdogs_termination_message_is_a_hang(self) -> None:
        failure = classify(hung())
        assert failure is not None and failure.cause is Cause.HANG and failure.reason == "Hang"
        assert failure.message == f"worker j-worker-0: {HANG_LINE}"

    def test_a_hang_explains_the_peers_that_failed_waiting_for_it(self) -> None:
        peer = classify(pod(1, phase="Failed", exit_code=1, message="lost contact with another training process"))
        hang = classify(hung())
        assert peer and hang and gang_failure([peer, hang]) == hang

    def test_a_hang_restarts_on_its_own_budget_and_is_stalled_until_the_new_workers_run(self) -> None:
        s = spec(runPolicy={"backoffLimit": 0, "hangRestartLimit": 1})
        p = plan(s, observed(launched(), [hung(0), pod(1)]))
        assert p.status.phase == "Restarting" and p.restart_cause is Cause.HANG
        assert p.status.restarts == RestartsStatus(infrastructure=0, application=0, hang=1)
        assert sorted(p.delete_pods) == ["j-worker-0", "j-worker-1"]
        assert p.delete_grace == 1, "a hung gang cannot commit a step: no grace period to wait out"
        assert conditions(p)["Stalled"] == ("True", "Hang")
        hang_events = [e for e in p.events if e.reason == "Hang"]
        assert len(hang_events) == 1 and "rank 0" in hang_events[0].message
        assert "diagnostics/attempt-1/rank-0.txt" in hang_events[0].message
        assert "0 hang restart(s) left" in p.status.message

        old_ones = plan(s, observed(p.status, [hung(0), pod(1, deleting=True)], now=NOW + timedelta(seconds=5)))
        assert old_ones.status.phase == "Restarting" and conditions(old_ones)["Stalled"] == ("True", "Hang"), \
            "while the old workers terminate too"
        starting = {**p.status.to_manifest(), "workers": {"launched": True, "attempt": 2}}
        waiting = plan(s, observed(starting, [pod(0, 2, phase="Pending", ready=False), pod(1, 2)],
                                   now=NOW + timedelta(seconds=20)))
        assert waiting.status.phase == "Restarting" and conditions(waiting)["Stalled"] == ("True", "Hang")
        running = plan(s, observed(waiting.status, [pod(0, 2), pod(1, 2)], now=NOW + timedelta(seconds=40)))
        assert running.status.phase == "Running" and conditions(running)["Stalled"][0] == "False"

        again = plan(s, observed(running.status, [hung(1, 2), pod(0, 2)], now=NOW + timedelta(seconds=60)))
        assert again.status.phase == "Failed"
        assert conditions(again)["Failed"] == ("True", "HangLimitExceeded")
        assert again.status.restarts.application == 0, "hangs never spend the backoff limit"

    def test_the_operator_treats_a_silent_job_as_hung_after_the_deadline_and_a_margin(self) -> None:
        s = spec(runPolicy={"progressDeadlineSeconds": 300})
        running = plan(s, observed(launched(phase="Pending"), [pod(0), pod(1)])).status  # Ready since NOW
        last = NOW + timedelta(minutes=5)
        reported = {**running.to_manifest(), "progress": {"step": 7, "totalSteps": 50, "updatedAt": ts(last)}}

        quiet = plan(s, observed(reported, [pod(0), pod(1)], now=last + timedelta(seconds=300)))
        assert quiet.status.phase == "Running" and not quiet.delete_pods
        assert quiet.requeue_after == pytest.approx(HANG_MARGIN_SECONDS)  # it looks again when it would be late

        silent = plan(s, observed(reported, [pod(0), pod(1)], now=last + timedelta(seconds=300 + HANG_MARGIN_SECONDS)))
        assert silent.status.phase == "Restarting" and silent.restart_cause is Cause.HANG
        assert silent.status.restarts.hang == 1 and conditions(silent)["Stalled"] == ("True", "Hang")
        assert "no progress reported for 420 s" in silent.status.message

        # After the last step rank 0 reports every interval while it exports (however long storage takes):
        # a heartbeat 10 s old is an export under way, a silent one is a rank 0 frozen in its export.
        exported_at = last + timedelta(hours=1)
        exporting = {**reported, "progress": {"step": 50, "totalSteps": 50, "updatedAt": ts(exported_at)}}
        busy = plan(s, observed(exporting, [pod(0), pod(1)], now=exported_at + timedelta(seconds=10)))
        assert busy.status.phase == "Running" and not busy.delete_pods
        frozen = plan(s, observed(exporting, [pod(0), pod(1)],
                                  now=exported_at + timedelta(seconds=300 + HANG_MARGIN_SECONDS)))
        assert frozen.restart_cause is Cause.HANG and "no progress reported for 420 s" in frozen.status.message

    def test_a_first_step_that_never_comes_is_a_hang_after_the_startup_deadline(self) -> None:
        s = spec(runPolicy={"startupDeadlineSeconds": 600})
        running = plan(s, observed(launched(phase="Pending"), [pod(0), pod(1)])).status
        p = plan(s, observed(running, [pod(0), pod(1)], now=NOW + timedelta(seconds=600 + HANG_MARGIN_SECONDS)))
        assert p.restart_cause is Cause.HANG and "startupDeadlineSeconds is 600 s" in p.status.message

    def test_workers_that_never_start_make_the_job_stalled_with_the_schedulers_reason(self) -> None:
        s = spec(runPolicy={"startupDeadlineSeconds": 600, "backoffLimit": 0})
        created = plan(s, observed())
        unschedulable = pod(1, phase="Pending", ready=False)
        unschedulable["status"]["conditions"].append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."})
        pods = [pod(0), unschedulable]
        early = plan(s, observed(created.status, pods, now=NOW + timedelta(seconds=590)))
        assert early.status.phase == "Pending" and conditions(early)["Stalled"][0] == "False"
        assert early.requeue_after == pytest.approx(10), "it looks again when the deadline passes"

        late = plan(s, observed(early.status, pods, now=NOW + timedelta(seconds=601)))
        assert late.status.phase == "Pending" and conditions(late)["Stalled"] == ("True", "WorkersNotStarted")
        assert "j-worker-1: Unschedulable: 0/3 nodes are available" in late.status.message
        assert [e.reason for e in late.events] == ["WorkersNotStarted"]
        assert late.status.restarts == RestartsStatus() and not late.delete_pods, "no budget spent, nothing deleted"
        later = plan(s, observed(late.status, pods, now=NOW + timedelta(seconds=900)))
        assert conditions(later)["Stalled"] == ("True", "WorkersNotStarted") and not later.events, "one Event"


class TestStopped:
    STOPPED = "Stopped at step 57 by SIGTERM: checkpoint step-00000057 committed"

    def test_a_trainer_that_stopped_on_sigterm_is_an_infrastructure_restart_that_spends_no_budget(self) -> None:
        failure = classify(pod(1, phase="Failed", exit_code=4, message=self.STOPPED))
        assert failure is not None and failure.cause is Cause.INFRASTRUCTURE and failure.reason == "WorkerStopped"
        assert failure.message == f"worker j-worker-1: {self.STOPPED}"
        s = spec(runPolicy={"backoffLimit": 0})
        p = plan(s, observed(launched(), [pod(0, phase="Failed", exit_code=4, message=self.STOPPED.replace(
            "by SIGTERM", "by another rank's SIGTERM")), pod(1, phase="Failed", exit_code=4, message=self.STOPPED)]))
        assert p.status.phase == "Restarting" and p.restart_cause is Cause.INFRASTRUCTURE
        assert p.status.restarts == RestartsStatus(infrastructure=1, application=0, hang=0)
        assert p.delete_grace is None, "the pods' own grace: they may still be committing their step"

    def test_after_a_trainer_failure_the_survivors_are_stopped_at_once(self) -> None:
        p = plan(spec(), observed(launched(), [pod(0, phase="Failed", exit_code=1, message="boom"), pod(1)]))
        assert p.restart_cause is Cause.APPLICATION and sorted(p.delete_pods) == ["j-worker-0", "j-worker-1"]
        assert p.delete_grace == 1


def preflight_pod(phase: str = "Running", exit_code: int | None = None, message: str = "",
                  reason: str | None = None, terminated_reason: str | None = None) -> dict[str, Any]:
    p = pod(0, phase=phase, exit_code=exit_code, message=message, reason=reason)
    p["metadata"] = {"name": "j-preflight", "uid": "uid-preflight",
                     "labels": {"app.kubernetes.io/component": "preflight"}}
    if terminated_reason:
        p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = terminated_reason
    return p


class TestPreflight:
    """spec.preflight: one pod without GPUs before any worker, its verdict in status.preflight."""

    def test_the_first_pass_creates_the_preflight_pod_and_no_worker(self) -> None:
        decided = plan(spec(preflight={"enabled": True}), observed())
        assert decided.create_preflight and decided.create_ranks == []
        assert decided.status.phase == "Pending" and decided.status.conditions is not None
        assert {c.type: c.reason for c in decided.status.conditions}["Reconciling"] == "Preflight"

    def test_while_it_runs_the_job_waits(self) -> None:
        decided = plan(spec(preflight={"enabled": True}), observed({"phase": "Pending"}, [preflight_pod()]))
        assert not decided.create_preflight and decided.create_ranks == []
        assert decided.status.message == "preflight running in pod j-preflight"

    def test_its_report_is_recorded_and_the_workers_are_created_in_the_same_pass(self) -> None:
        report = '{"result":"Succeeded","records":12,"cacheUri":"s3://b/kubetune-cache/abc/"}'
        decided = plan(spec(preflight={"enabled": True}),
                       observed({"phase": "Pending"}, [preflight_pod("Succeeded", 0, report)]))
        assert decided.create_ranks == [0, 1]
        assert decided.status.preflight is not None and decided.status.preflight.cache_key == "abc"

    def test_once_passed_a_gang_restart_does_not_run_it_again(self) -> None:
        status = {**launched(), "preflight": {"result": "Succeeded"}}
        decided = plan(spec(preflight={"enabled": True}), observed(status, [pod(0, phase="Failed", exit_code=1)]))
        assert not decided.create_preflight and decided.status.phase == "Restarting"
        assert decided.status.preflight is not None and decided.status.preflight.result == "Succeeded"

    @pytest.mark.parametrize(("p", "message"), [
        (preflight_pod("Failed", 2, "s3://d/t.jsonl:10000: not valid JSON"),
         "s3://d/t.jsonl:10000: not valid JSON"),
        (preflight_pod("Failed", 137, "", terminated_reason="OOMKilled"),
         "preflight pod j-preflight ran out of memory (OOMKilled); raise spec.preflight.resources.limits.memory"),
        (preflight_pod("Succeeded", 0, "not json"),
         "preflight pod j-preflight completed without a report; see `kubectl logs j-preflight`"),
    ])
    def test_a_failure_fails_the_job_with_its_message(self, p: dict[str, Any], message: str) -> None:
        decided = plan(spec(preflight={"enabled": True}), observed({"phase": "Pending"}, [p]))
        assert decided.status.phase == "Failed" and decided.create_ranks == []
        assert decided.status.message == f"preflight failed: {message}"
        assert decided.status.preflight is not None and decided.status.preflight.result == "Failed"
        assert [e.reason for e in decided.events] == ["PreflightFailed"]

    def test_an_evicted_preflight_pod_runs_again(self) -> None:
        evicted = preflight_pod("Failed", reason="Evicted")
        decided = plan(spec(preflight={"enabled": True}), observed({"phase": "Pending"}, [evicted]))
        assert decided.status.phase == "Pending" and decided.delete_pods == ["j-preflight"]

    def test_suspending_during_the_preflight_deletes_its_pod(self) -> None:
        decided = plan(spec(preflight={"enabled": True}, runPolicy={"suspend": True}),
                       observed({"phase": "Pending"}, [preflight_pod()]))
        assert decided.status.phase == "Suspended" and decided.delete_pods == ["j-preflight"]

    def test_the_active_deadline_counts_during_the_preflight(self) -> None:
        status = {"phase": "Pending", "startTime": ts(NOW - timedelta(seconds=61))}
        decided = plan(spec(preflight={"enabled": True}, runPolicy={"activeDeadlineSeconds": 60}),
                       observed(status, [preflight_pod()]))
        assert decided.status.phase == "Failed" and decided.delete_pods == ["j-preflight"]
        assert decided.status.message == "exceeded spec.runPolicy.activeDeadlineSeconds (60s)"

    def test_the_workers_start_up_deadline_counts_from_the_preflights_verdict(self) -> None:
        # Pending (Reconciling) for 20 minutes, 19 of them in the preflight: the workers are 1 minute late, not 20.
        since = NOW - timedelta(minutes=20)
        status = {"phase": "Pending", "startTime": ts(since),
                  "conditions": [{"type": "Reconciling", "status": "True", "reason": "WaitingForWorkers",
                                  "lastTransitionTime": ts(since)}],
                  "workers": {"launched": True, "ready": 0, "total": 2},
                  "preflight": {"result": "Succeeded", "completedAt": ts(NOW - timedelta(minutes=1))}}
        decided = plan(spec(preflight={"enabled": True}, runPolicy={"startupDeadlineSeconds": 600}),
                       observed(status, [pod(0, phase="Pending", ready=False), pod(1, phase="Pending", ready=False)]))
        assert decided.status.phase == "Pending" and "WorkersNotStarted" not in str(decided.status.conditions)
        assert decided.requeue_after is not None and decided.requeue_after <= 540
