"""Rank 0 reports progress on its FineTuneJob: status.progress, checkpoints, evaluation and output.

A JSON merge patch on the job's status subresource, sent with the pod's own
service account (kubetune-worker: its Role may get and patch FineTuneJob status,
and the chart's admission policy lets a pod write only its own job's). Patches
are throttled (settings.status_interval_seconds) and sent from a background thread, so a slow or unreachable API server never slows training;
a commit, an early stop, the end of training and the output are sent at once.
After the last step the report goes out every interval even when nothing changed
(progress.updatedAt is the heartbeat): the export and the last uploads report no
steps, and the operator tells a rank 0 that is still exporting from one that is
frozen by that heartbeat alone.
Reporting is best effort: a failed patch is logged and the next one carries
the news.
Outside a cluster there is nothing to patch, and the log lines are the report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from kubetune_api import (
    CheckpointRef,
    CheckpointsStatus,
    EarlyStop,
    EvaluationRound,
    EvaluationStatus,
    FineTuneJobStatus,
    Manifest,
    MetricValue,
    OutputStatus,
    ParametersStatus,
    ProgressStatus,
    parse_timestamp,
    progress_text,
    utc_now,
)
from kubetune_api.constants import GROUP, PLURAL, VERSION
from kubetune_trainer.background import BackgroundWorker
from kubetune_trainer.callbacks import Callback, StepMetrics
from kubetune_trainer.logs import log_event
from kubetune_trainer.manifest import Commit
from kubetune_trainer.metrics import Evaluation
from kubetune_trainer.settings import Settings

Patcher = Callable[[Manifest], None]
# The heartbeat after the last step goes out at most this often, whatever the interval (which may be 0).
HEARTBEAT_MIN_SECONDS = 1.0


def _finite(value: float | None) -> float | None:
    """The CRD rejects NaN and infinities: leave such a value out rather than fail the patch."""
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class Report:
    """What rank 0 knows, as the loop measured it (NaN included); `trainer_status` makes it a status."""

    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    samples_per_second: float | None = None
    eta_seconds: float | None = None
    latest_checkpoint: Commit | None = None
    resumed_from: tuple[int, str, str] | None = None  # step, uri, committed_at
    output_uri: str | None = None
    metric: str | None = None  # the deciding evaluation metric
    best: tuple[int, float] | None = None  # step, value
    latest_evaluation: tuple[int, dict[str, float]] | None = None  # step, metrics
    stopped_early: tuple[int, str] | None = None  # step, message
    parameters: tuple[int, int] | None = None  # trainable, total


def trainer_status(report: Report, now: datetime) -> FineTuneJobStatus:
    """The trainer's part of the status (progress, progressText, checkpoints, evaluation,
    parameters, output) for `report`."""
    eta = _finite(report.eta_seconds)
    progress = ProgressStatus(
        step=report.step,
        total_steps=report.total_steps,
        epoch=_finite(report.epoch),
        loss=_finite(report.loss),
        eval_loss=_finite(report.eval_loss),
        learning_rate=_finite(report.learning_rate),
        tokens_per_second=_finite(report.tokens_per_second),
        samples_per_second=_finite(report.samples_per_second),
        eta_seconds=max(0, round(eta)) if eta is not None else None,
        updated_at=now,
    )
    commit = report.latest_checkpoint
    resumed = report.resumed_from
    # Only what this attempt knows: a field left out of the patch keeps what an earlier attempt
    # wrote (e.g. checkpoints.latest and committed, before this attempt's first commit).
    checkpoints: dict[str, Any] = {}
    if commit is not None:
        checkpoints["latest"] = CheckpointRef(step=commit.step, uri=commit.uri,
                                             committed_at=parse_timestamp(commit.committed_at))
        checkpoints["committed"] = commit.committed
    if resumed is not None:
        checkpoints["resumed_from"] = CheckpointRef(step=resumed[0], uri=resumed[1],
                                                   committed_at=parse_timestamp(resumed[2]))
    status: dict[str, Any] = {
        "progress": progress, "progress_text": progress_text(report.step, report.total_steps)}
    if checkpoints:
        status["checkpoints"] = CheckpointsStatus(**checkpoints)
    if report.output_uri:
        status["output"] = OutputStatus(uri=report.output_uri)
    evaluation = _evaluation_status(report)
    if evaluation is not None:
        status["evaluation"] = evaluation
    if report.parameters is not None:
        status["parameters"] = ParametersStatus(trainable=report.parameters[0], total=report.parameters[1])
    return FineTuneJobStatus(**status)


def _evaluation_status(report: Report) -> EvaluationStatus | None:
    fields: dict[str, Any] = {}
    if report.metric is not None:
        fields["metric"] = report.metric
    if report.best is not None and _finite(report.best[1]) is not None:
        fields["best"] = MetricValue(step=report.best[0], value=report.best[1])
    if report.latest_evaluation is not None:
        step, metrics = report.latest_evaluation
        finite = {name: value for name, value in metrics.items() if _finite(value) is not None}
        fields["latest"] = EvaluationRound(step=step, metrics=finite)
    if report.stopped_early is not None:
        fields["stopped_early"] = EarlyStop(step=report.stopped_early[0], message=report.stopped_early[1][:4096])
    return EvaluationStatus(**fields) if fields else None


def status_patch(report: Report, now: datetime) -> Manifest:
    """The merge patch for `report` on the job's status subresource."""
    return {"status": trainer_status(report, now).to_patch()}


def kube_status_patcher(settings: Settings) -> Patcher | None:
    """A function patching this job's status with the pod's service account; None outside a cluster."""
    if not settings.in_cluster:
        return None
    from kubernetes import client
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.incluster_config import InClusterConfigLoader

    configuration = client.Configuration()
    token, ca = settings.service_account_dir / "token", settings.service_account_dir / "ca.crt"
    try:
        InClusterConfigLoader(token_filename=str(token), cert_filename=str(ca)).load_and_set(configuration)
    except ConfigException as e:
        log_event("status_reporting_off", reason=f"no usable service account in {settings.service_account_dir}: {e}")
        return None
    api = client.CustomObjectsApi(client.ApiClient(configuration))
    namespace, name = str(settings.namespace), str(settings.job_name)

    def patch(body: Manifest) -> None:
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, body,
            _content_type="application/merge-patch+json", _request_timeout=(5, 15))

    return patch


class ProgressReporter(BackgroundWorker, Callback):
    """Keeps the latest progress and patches it at most every `interval` seconds (rank 0 only)."""

    name = "status"

    def __init__(self, patcher: Patcher, interval: float) -> None:
        super().__init__()
        self.patcher, self.interval = patcher, interval
        self._report = Report()
        self._dirty = self._urgent = False
        self._heartbeat = False  # after the last step: send every interval, changed or not
        self._last_sent = 0.0
        self._last_error_logged = -math.inf
        self.start()

    def _update(self, urgent: bool = False, **changes: Any) -> None:
        with self._cond:
            self._report = replace(self._report, **changes)
            self._dirty = True
            self._urgent = self._urgent or urgent
            self._cond.notify_all()

    # -- hooks (training thread, and the committer's thread for commits)
    def on_train_start(self, start_step: int, total_steps: int) -> None:
        self._update(urgent=True, step=start_step, total_steps=total_steps)

    def on_step_end(self, metrics: StepMetrics) -> None:
        self._update(step=metrics.step, total_steps=metrics.total_steps, epoch=metrics.epoch,
                     loss=metrics.loss, learning_rate=metrics.learning_rate,
                     tokens_per_second=metrics.tokens_per_second,
                     samples_per_second=metrics.samples_per_second, eta_seconds=metrics.eta_seconds)

    def on_eval_end(self, evaluation: Evaluation, best: tuple[int, float] | None) -> None:
        self._update(eval_loss=evaluation.metrics.get("eval_loss"), best=best,
                     latest_evaluation=(evaluation.step, dict(evaluation.metrics)))

    def on_stopped_early(self, step: int, message: str) -> None:
        self._update(urgent=True, stopped_early=(step, message))

    def on_setup(self, metric: str | None, trainable: int, total: int) -> None:
        """What the run is judged by, and how many of the model's parameters it trains."""
        self._update(urgent=True, metric=metric, parameters=(trainable, total))

    def on_train_end(self, step: int) -> None:
        with self._cond:
            self._heartbeat = True
        self._update(urgent=True, step=step, eta_seconds=0.0)

    def on_commit(self, commit: Commit) -> None:
        self._update(urgent=True, latest_checkpoint=commit)

    def on_resume(self, step: int, uri: str, committed_at: str) -> None:
        """This attempt starts from a committed checkpoint (the commit that made it is the latest)."""
        self._update(urgent=True, step=step, resumed_from=(step, uri, committed_at))

    def on_output(self, uri: str) -> None:
        self._update(urgent=True, output_uri=uri)

    def close(self, timeout: float = 20.0) -> None:
        """Send what is pending, then stop."""
        super().close(timeout)

    # -- reporting thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    wait = self._last_sent + self.interval - now
                    if self._dirty and (self._urgent or self.stopping or wait <= 0):
                        break
                    if self.stopping:
                        return
                    beat = self._last_sent + max(self.interval, HEARTBEAT_MIN_SECONDS) - now
                    if self._heartbeat and beat <= 0:
                        break
                    waits = ([wait] if self._dirty else []) + ([beat] if self._heartbeat else [])
                    self._cond.wait(min(waits) if waits else None)
                report, self._dirty, self._urgent = self._report, False, False
                stopping = self.stopping
            self._send(report)
            if stopping:
                with self._cond:
                    if not self._dirty:
                        return

    def _send(self, report: Report) -> None:
        self._last_sent = time.monotonic()
        try:
            self.patcher(status_patch(report, utc_now()))
        except Exception as e:  # best effort: never let reporting break training
            if time.monotonic() - self._last_error_logged > 60:
                self._last_error_logged = time.monotonic()
                log_event("status_patch_failed", error=_describe(e))


def _describe(error: Exception) -> str:
    status, reason = getattr(error, "status", None), getattr(error, "reason", None)
    if status:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
