"""Progress reporting: the status patch rank 0 sends, and how often it sends it.

The patch against a real API server, with the job's own least-privilege
ServiceAccount, is checked by the ZeRO-2 run in test_streaming.py.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from kubetune_api import FineTuneJobStatus
from kubetune_trainer.callbacks import StepMetrics
from kubetune_trainer.manifest import Commit
from kubetune_trainer.progress import ProgressReporter, Report, status_patch

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def metrics(step: int, loss: float = 1.5) -> StepMetrics:
    return StepMetrics(step=step, total_steps=100, epoch=step / 50, loss=loss, learning_rate=1e-4,
                       grad_norm=None, tokens_per_second=5400.0, samples_per_second=2.6, eta_seconds=123.4)


def test_the_patch_is_a_valid_status_without_nan() -> None:
    commit = Commit(step=40, uri="s3://b/ckpt/step-00000040/", committed_at="2026-01-02T03:00:00Z",
                    committed=2, bytes=10)
    report = Report(step=42, total_steps=100, epoch=0.84, loss=float("nan"), eval_loss=1.31,
                    learning_rate=1e-4, tokens_per_second=float("inf"), eta_seconds=57.6,
                    latest_checkpoint=commit, output_uri=None)
    patch = status_patch(report, NOW)
    assert patch == {"status": {
        "progress": {"step": 42, "totalSteps": 100, "epoch": 0.84, "evalLoss": 1.31, "learningRate": 1e-4,
                     "etaSeconds": 58, "updatedAt": "2026-01-02T03:04:05Z"},
        "progressText": "42/100",
        "checkpoints": {"latest": {"step": 40, "uri": "s3://b/ckpt/step-00000040/",
                                   "committedAt": "2026-01-02T03:00:00Z"}, "committed": 2},
    }}
    FineTuneJobStatus.model_validate(patch["status"])  # what the operator reads back


def test_a_resumed_attempt_reports_where_it_started() -> None:
    sent: list[dict[str, Any]] = []
    reporter = ProgressReporter(sent.append, interval=3600)
    reporter.on_resume(30, "s3://b/ckpt/step-00000030/", "2026-01-02T03:00:00Z")
    reporter.close()
    status = sent[-1]["status"]
    assert status["progress"]["step"] == 30
    # A merge patch: checkpoints.latest, written by the earlier attempt, stays as it is.
    assert status["checkpoints"] == {"resumedFrom": {"step": 30, "uri": "s3://b/ckpt/step-00000030/",
                                                     "committedAt": "2026-01-02T03:00:00Z"}}
    FineTuneJobStatus.model_validate(status)


def test_steps_are_throttled_and_commits_sent_at_once() -> None:
    sent: list[dict[str, Any]] = []
    arrived = threading.Event()

    def patcher(body: dict[str, Any]) -> None:
        sent.append(body["status"])
        arrived.set()

    reporter = ProgressReporter(patcher, interval=3600)
    try:
        reporter.on_train_start(0, 100)  # sent at once
        assert arrived.wait(5)
        for step in range(1, 20):
            reporter.on_step_end(metrics(step))
        time.sleep(0.3)
        assert len(sent) == 1  # within the interval: held back
        arrived.clear()
        reporter.on_commit(Commit(10, "s3://b/c/step-00000010/", "2026-01-02T03:00:00Z", 1, 10))
        assert arrived.wait(5)
        assert sent[-1]["progress"]["step"] == 19 and sent[-1]["checkpoints"]["latest"]["step"] == 10
        reporter.on_step_end(metrics(20))
    finally:
        reporter.close()  # flushes what is pending
    assert sent[-1]["progress"]["step"] == 20 and sent[-1]["progressText"] == "20/100"


def test_a_failing_api_server_never_stops_training(capsys: Any) -> None:
    calls = []

    def patcher(body: dict[str, Any]) -> None:
        calls.append(body)
        raise ConnectionError("connection refused")

    reporter = ProgressReporter(patcher, interval=0)
    reporter.on_step_end(metrics(1))
    reporter.on_train_end(1)
    reporter.close()
    assert calls and '"event": "status_patch_failed"' in capsys.readouterr().out


def test_after_the_last_step_the_report_is_a_heartbeat_sent_every_interval() -> None:
    """The export reports no steps: rank 0 sends its report anyway, every interval, with a new updatedAt, so
    the operator can tell an export under way from a frozen rank 0. Nothing is sent unchanged before that."""
    sent: list[dict[str, Any]] = []
    reporter = ProgressReporter(lambda body: sent.append(body["status"]), interval=0)
    try:
        reporter.on_train_start(0, 2)
        reporter.on_step_end(metrics(1))
        time.sleep(0.3)
        training = len(sent)
        time.sleep(1.5)
        assert len(sent) == training, "while training, only changes are sent"
        reporter.on_train_end(2)
        time.sleep(3.5)
    finally:
        reporter.close()
    beats = sent[training:]
    # Interval 0 sends every change at once, and the heartbeat once a second (HEARTBEAT_MIN_SECONDS).
    assert 3 <= len(beats) <= 5 and all(b["progress"]["step"] == 2 for b in beats)
    stamps = [b["progress"]["updatedAt"] for b in beats]  # RFC 3339, whole seconds
    assert stamps == sorted(stamps) and len(set(stamps)) >= 2
