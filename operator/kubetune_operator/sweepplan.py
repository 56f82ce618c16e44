"""What a FineTuneSweep needs next, decided from what was observed: pure, no API calls.

Inputs: the sweep's parsed spec, its stored status, its trial FineTuneJobs and
its promotion pod. Output: the new status (every trial's row, counts, best,
conditions), the trials to create, the ones to stop (pruned) or to suspend or
resume, the promotion pod to create, and the Events to record.

The status is the sweep's memory. A trial's row (with its parameters) is
written before its FineTuneJob is created, so after a crash the next pass
creates the job of a row that has none, and never suggests that trial again:
no trial is lost or duplicated, and the search's state (suggest.py) is the
rows themselves.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetune_api import Manifest, SpecError
from kubetune_api.status import MetricValue
from kubetune_api.sweep import (
    PRUNED_ANNOTATION,
    TRIAL_LABEL,
    BestTrial,
    FineTuneSweepSpec,
    FineTuneSweepStatus,
    PromotionStatus,
    SweepPhase,
    TrialCounts,
    TrialRow,
    trial_spec,
)

from .plan import Event
from .status import condition
from .suggest import suggest

CONDITION_RUNNING = "Running"
CONDITION_SUCCEEDED = "Succeeded"
CONDITION_FAILED = "Failed"
MAX_CURVE = 100


@dataclass
class SweepObserved:
    name: str
    generation: int
    status: FineTuneSweepStatus
    trials: list[Manifest]  # the sweep's FineTuneJobs
    promotion_pod: Manifest | None
    now: datetime


@dataclass
class SweepPlan:
    status: FineTuneSweepStatus
    create: list[TrialRow] = field(default_factory=list)  # rows whose FineTuneJob must exist
    prune: dict[str, str] = field(default_factory=dict)  # trial name -> why
    suspend: dict[str, bool] = field(default_factory=dict)  # trial name -> runPolicy.suspend wanted
    promote: bool = False  # the promotion pod must exist
    events: list[Event] = field(default_factory=list)


def trial_name(sweep: str, number: int) -> str:
    return f"{sweep}-{number}"


def _params_text(parameters: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in parameters.items())


def _value_at(curve: Sequence[MetricValue], step: int) -> float | None:
    """A finished trial's metric at `step`: its evaluation at that step or the last one before."""
    before = [c for c in curve if c.step <= step]
    return max(before, key=lambda c: c.step).value if before else None


def median_rule(spec: FineTuneSweepSpec, row: TrialRow, rows: Sequence[TrialRow]) -> str | None:
    """Why a running trial should be pruned by the median rule, or None."""
    if spec.pruning is None or row.phase != "Running" or not row.curve:
        return None
    latest = max(row.curve, key=lambda c: c.step)
    if latest.step == 0 or latest.step < spec.pruning.start_step:  # step 0: the base model, the same for all
        return None
    finished = [r for r in rows if r.phase == "Succeeded" and r.curve and r.number != row.number]
    at = [v for r in finished if (v := _value_at(r.curve or (), latest.step)) is not None]
    if len(at) < spec.pruning.min_trials:
        return None
    median = statistics.median(at)
    if not spec.better(median, latest.value) or median == latest.value:
        return None
    return (f"{spec.metric} {latest.value:.4g} at step {latest.step} is worse than the median {median:.4g} "
            f"of {len(at)} finished trials at that step")


def _observe(row: TrialRow, job: Manifest | None, metric: str) -> TrialRow:
    """The row updated from its FineTuneJob's status."""
    if job is None or row.phase == "Pruned":
        return row
    status = job.get("status") or {}
    update: dict[str, Any] = {}
    phase = status.get("phase") or "Pending"
    update["phase"] = phase
    evaluation = status.get("evaluation") or {}
    best = evaluation.get("best") or {}
    if evaluation.get("metric") == metric and best.get("value") is not None:
        update["value"], update["step"] = float(best["value"]), best.get("step")
    latest = evaluation.get("latest") or {}
    value = (latest.get("metrics") or {}).get(metric)
    curve = list(row.curve or ())
    if value is not None and latest.get("step") is not None and all(c.step != latest["step"] for c in curve):
        curve = sorted([*curve, MetricValue(step=int(latest["step"]), value=float(value))], key=lambda c: c.step)
        update["curve"] = curve[-MAX_CURVE:]
    if phase == "Failed":
        update["message"] = (status.get("message") or "")[:1024] or None
    return row.model_copy(update=update)


def plan_sweep(spec: FineTuneSweepSpec, seen: SweepObserved) -> SweepPlan:
    stored = seen.status
    jobs = {j["metadata"]["name"]: j for j in seen.trials}
    events: list[Event] = []
    before = {r.number: r for r in stored.trials or ()}
    rows = [_observe(r, jobs.get(r.name), spec.metric) for r in sorted(before.values(), key=lambda r: r.number)]
    plan = SweepPlan(status=stored)

    # Pruning, by the median of the finished trials.
    for i, row in enumerate(rows):
        why = median_rule(spec, row, rows)
        if why is not None:
            rows[i] = row.model_copy(update={"phase": "Pruned", "message": why})
            plan.prune[row.name] = why

    for row in rows:
        old = before.get(row.number)
        if old is not None and old.phase != row.phase and row.done:
            if row.phase == "Pruned":
                events.append(Event("Normal", "TrialPruned", f"pruned trial {row.name}: {row.message}"))
            elif row.phase == "Failed":
                events.append(Event("Warning", "TrialFailed", f"trial {row.name} failed: {row.message or ''}"))
            else:
                value = f": {spec.metric} {row.value:.4g}" if row.value is not None else ""
                events.append(Event("Normal", "TrialSucceeded", f"trial {row.name} succeeded{value}"))

    limit = spec.trial_limit
    running = [r for r in rows if not r.done]
    # New trials, while there is room: rows first (written before their jobs are created).
    if not spec.suspend and stored.phase not in (SweepPhase.SUCCEEDED, SweepPhase.FAILED):
        while len(rows) < limit and len(running) < spec.parallelism:
            number = len(rows)
            name = trial_name(seen.name, number)
            finished = [r for r in rows if r.done]
            parameters, basis = suggest(spec, number, finished)
            row = TrialRow(number=number, name=name, parameters=parameters, basis=basis)
            try:
                trial_spec(spec.template, name, parameters)
            except SpecError as e:
                row = row.model_copy(update={"phase": "Failed", "message": f"invalid trial: {e}"[:1024]})
                events.append(Event("Warning", "TrialFailed", f"trial {name} ({_params_text(parameters)}) "
                                         f"is not a valid FineTuneJob: {e}"))
            else:
                running.append(row)
                events.append(Event("Normal", "TrialCreated", f"created trial {name}: {_params_text(parameters)}"))
            rows.append(row)
    plan.create = [r for r in rows if not r.done and r.name not in jobs]

    # Suspension follows the sweep's; a pruned trial stays suspended.
    for row in rows:
        job = jobs.get(row.name)
        if job is None:
            continue
        wanted = row.name in plan.prune or row.phase == "Pruned" or (spec.suspend and not row.done)
        has = bool(((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"))
        pruned_mark = (job["metadata"].get("annotations") or {}).get(PRUNED_ANNOTATION)
        if row.phase == "Pruned" and not pruned_mark:
            plan.prune.setdefault(row.name, row.message or "pruned")
        elif wanted != has and (not row.done or row.phase == "Pruned"):
            plan.suspend[row.name] = wanted

    best = _best(spec, rows)
    if best is not None and (stored.best is None or stored.best.name != best.name):
        events.append(Event("Normal", "NewBest", f"trial {best.name} is the best so far: {spec.metric} "
                                 f"{best.value:.4g} ({_params_text(best.parameters)})"))
    counts = TrialCounts(
        created=len(rows), running=sum(1 for r in rows if not r.done),
        succeeded=sum(1 for r in rows if r.phase == "Succeeded"),
        failed=sum(1 for r in rows if r.phase == "Failed"), pruned=sum(1 for r in rows if r.phase == "Pruned"))
    done = counts.succeeded + counts.failed + counts.pruned
    all_done = len(rows) >= limit and counts.running == 0

    phase, reason, message = SweepPhase.RUNNING, "TrialsRunning", (
        f"{done}/{limit} trials done, {counts.running} running")
    promotion = stored.promotion
    completion = stored.completion_time
    if stored.phase in (SweepPhase.SUCCEEDED, SweepPhase.FAILED):
        phase, reason, message = stored.phase, _reason(stored), stored.message or ""
    elif all_done and best is None:
        phase, reason = SweepPhase.FAILED, "AllTrialsFailed"
        message = f"none of the {len(rows)} trials succeeded with a value of {spec.metric}"
    elif all_done and best is not None:
        summary = f"best {spec.metric} {best.value:.4g} by trial {best.name} ({_params_text(best.parameters)})"
        if spec.promote is None:
            phase, reason, message = SweepPhase.SUCCEEDED, "BestTrialFound", summary
        else:
            promotion, phase, reason, message = _promotion(spec, seen, best, summary, events)
    elif spec.suspend:
        phase, reason, message = SweepPhase.SUSPENDED, "Suspended", f"suspended with {done}/{limit} trials done"
    plan.promote = promotion is not None and promotion.phase == "Pending" and phase == SweepPhase.RUNNING
    if phase in (SweepPhase.SUCCEEDED, SweepPhase.FAILED) and stored.phase != phase:
        completion = seen.now
        events.append(Event("Normal" if phase == SweepPhase.SUCCEEDED else "Warning", reason, message))

    def cond(type_: str, true: bool) -> Any:
        return condition(stored, type_, "True" if true else "False", reason, message, seen.now,  # type: ignore[arg-type]
                         seen.generation)

    conditions = [cond(CONDITION_RUNNING, phase == SweepPhase.RUNNING)]
    if phase == SweepPhase.SUCCEEDED:
        conditions.append(cond(CONDITION_SUCCEEDED, True))
    if phase == SweepPhase.FAILED:
        conditions.append(cond(CONDITION_FAILED, True))
    plan.status = FineTuneSweepStatus(
        observed_generation=seen.generation, phase=phase, conditions=conditions,  # type: ignore[arg-type]
        start_time=stored.start_time or seen.now, completion_time=completion, metric=spec.metric,
        direction="maximize" if spec.maximize else "minimize", counts=counts, trials_text=f"{done}/{limit}",
        trials=rows, best=best, promotion=promotion, message=message)
    plan.events = events
    return plan


def _reason(status: FineTuneSweepStatus) -> str:
    for type_ in (CONDITION_SUCCEEDED, CONDITION_FAILED):
        c = status.condition(type_)
        if c is not None and c.status == "True":
            return c.reason
    return "Finished"


def _best(spec: FineTuneSweepSpec, rows: Sequence[TrialRow]) -> BestTrial | None:
    best: TrialRow | None = None
    for row in rows:
        if row.phase == "Succeeded" and row.value is not None and spec.better(row.value, best.value if best else None):
            best = row
    if best is None or best.value is None:
        return None
    return BestTrial(name=best.name, number=best.number, value=best.value, step=best.step, parameters=best.parameters)


def _promotion(spec: FineTuneSweepSpec, seen: SweepObserved, best: BestTrial, summary: str,
               events: list[Event]) -> tuple[PromotionStatus, str, str, str]:
    assert spec.promote is not None
    uri = spec.promote.uri
    pod = seen.promotion_pod
    pod_phase = ((pod or {}).get("status") or {}).get("phase")
    if pod_phase == "Succeeded":
        events.append(Event("Normal", "Promoted", f"copied trial {best.name}'s model to {uri}"))
        return (PromotionStatus(phase="Succeeded", trial=best.name, uri=uri), SweepPhase.SUCCEEDED, "BestTrialPromoted",
                f"{summary}; promoted to {uri}")
    if pod_phase == "Failed":
        why = termination_message(pod) or "the promotion pod failed"
        return (PromotionStatus(phase="Failed", trial=best.name, uri=uri, message=why[:4096]), SweepPhase.FAILED,
                "PromotionFailed", f"{summary}; copying it to {uri} failed: {why}")
    return (PromotionStatus(phase="Pending", trial=best.name, uri=uri), SweepPhase.RUNNING, "Promoting",
            f"{summary}; copying its model to {uri}")


def termination_message(pod: Manifest | None) -> str:
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or ():
        terminated = (status.get("state") or {}).get("terminated") or {}
        text = (terminated.get("message") or "").strip()
        if text:
            return text.splitlines()[-1]
    return ""


def promotion_result(spec: FineTuneSweepSpec, sweep: str, namespace: str, best: BestTrial) -> str:
    """What sweep-result.json records (as JSON): the sweep, the trial, its parameters and metric."""
    return json.dumps({"sweep": sweep, "namespace": namespace, "trial": best.name, "number": best.number,
                       "parameters": best.parameters, "metric": spec.metric, "value": best.value,
                       "step": best.step}, sort_keys=True)


def number_of(job: Manifest) -> int | None:
    try:
        return int((job["metadata"].get("labels") or {})[TRIAL_LABEL])
    except (KeyError, ValueError):
        return None
