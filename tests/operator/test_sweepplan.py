"""A FineTuneSweep's decisions, pass by pass, from plain data (sweepplan.py and suggest.py are pure):
how many trials run, which are pruned, which is best, when the sweep ends, and that the search
continues exactly after a restart. tests/e2e/test_sweep.py runs sweeps for real."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from kubetune_api.sweep import FineTuneSweepSpec, FineTuneSweepStatus, TrialRow, parse_sweep_spec
from kubetune_operator.suggest import suggest
from kubetune_operator.sweepplan import SweepObserved, SweepPlan, median_rule, plan_sweep
from kubetune_testbed import REPO

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def example(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(yaml.safe_load((REPO / "examples" / "sweep-lora-lr.yaml").read_text())["spec"])
    spec.update(changes)
    return spec


def job(name: str, phase: str, best: float | None = None, curve: tuple[tuple[int, float], ...] = (),
        message: str = "", suspended: bool = False) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    evaluation: dict[str, Any] = {"metric": "eval_loss"}
    if best is not None:
        evaluation["best"] = {"step": 16, "value": best}
    if curve:
        evaluation["latest"] = {"step": curve[-1][0], "metrics": {"eval_loss": curve[-1][1]}}
    status["evaluation"] = evaluation
    if message:
        status["message"] = message
    return {"metadata": {"name": name, "labels": {}}, "spec": {"runPolicy": {"suspend": suspended}}, "status": status}


class Sweep:
    """The sweep's status carried from pass to pass, as the API server would keep it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec: FineTuneSweepSpec = parse_sweep_spec(spec)
        self.status = FineTuneSweepStatus()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pod: dict[str, Any] | None = None

    def step(self) -> SweepPlan:
        seen = SweepObserved(name="s", generation=1, status=self.status, trials=list(self.jobs.values()),
                             promotion_pod=self.pod, now=NOW)
        plan = plan_sweep(self.spec, seen)
        # The status round-trips through JSON, as it does through the API server.
        self.status = FineTuneSweepStatus.model_validate(plan.status.to_manifest())
        for row in plan.create:
            self.jobs.setdefault(row.name, job(row.name, "Pending"))
        return plan

    def rows(self) -> list[TrialRow]:
        return list(self.status.trials or ())


def test_a_grid_sweep_runs_at_most_parallelism_trials_and_all_six_in_order() -> None:
    sweep = Sweep(example())
    plan = sweep.step()
    assert [r.name for r in plan.create] == ["s-0", "s-1"]
    assert [r.parameters for r in sweep.rows()] == [sweep.spec.grid_point(0), sweep.spec.grid_point(1)]
    assert [e.reason for e in plan.events] == ["TrialCreated", "TrialCreated"]
    assert sweep.step().create == []  # both still running: nothing new
    for n in range(6):
        sweep.jobs[f"s-{n}"] = job(f"s-{n}", "Succeeded", best=2.0 - n / 10, curve=((16, 2.0 - n / 10),))
        plan = sweep.step()
        running = [r for r in sweep.rows() if not r.done]
        assert len(running) <= 2
    assert sweep.status.counts is not None and sweep.status.counts.created == 6
    assert sweep.status.phase == "Running"  # waiting for the promotion
    assert plan.promote and sweep.status.promotion is not None and sweep.status.promotion.phase == "Pending"
    assert sweep.status.best is not None and sweep.status.best.name == "s-5" and sweep.status.best.value == 1.5
    sweep.pod = {"status": {"phase": "Succeeded"}}
    plan = sweep.step()
    assert sweep.status.phase == "Succeeded" and sweep.status.trials_text == "6/6"
    assert {e.reason for e in plan.events} >= {"Promoted", "BestTrialPromoted"}
    assert not plan.create and not plan.promote


def test_rows_are_kept_before_their_trials_exist_so_a_restart_creates_them_and_suggests_nothing_new() -> None:
    sweep = Sweep(example())
    sweep.step()
    sweep.jobs.clear()  # the operator died after writing the rows, before creating the trials
    plan = sweep.step()
    assert [r.name for r in plan.create] == ["s-0", "s-1"]
    assert len(sweep.rows()) == 2


def test_the_best_is_the_lowest_loss_among_succeeded_trials_and_failures_do_not_end_the_sweep() -> None:
    sweep = Sweep(example(parallelism=6))
    sweep.step()
    for n in range(6):
        sweep.jobs[f"s-{n}"] = job(f"s-{n}", "Failed", message="worker exited 1") if n % 2 else \
            job(f"s-{n}", "Succeeded", best=1.0 + abs(n - 2) / 10)
    sweep.pod = {"status": {"phase": "Succeeded"}}
    sweep.step()
    sweep.step()
    assert sweep.status.best is not None and sweep.status.best.name == "s-2"
    assert sweep.status.counts is not None and (sweep.status.counts.succeeded, sweep.status.counts.failed) == (3, 3)
    assert sweep.status.phase == "Succeeded"


def test_a_sweep_whose_every_trial_failed_fails() -> None:
    sweep = Sweep(example(parallelism=6, promote=None))
    sweep.step()
    for n in range(6):
        sweep.jobs[f"s-{n}"] = job(f"s-{n}", "Failed", message="bad data")
    plan = sweep.step()
    assert sweep.status.phase == "Failed" and "none of the 6 trials succeeded" in (sweep.status.message or "")
    assert any(e.reason == "AllTrialsFailed" for e in plan.events)


def test_a_failed_promotion_fails_the_sweep_with_the_pods_reason() -> None:
    sweep = Sweep(example(parallelism=6))
    sweep.step()
    for n in range(6):
        sweep.jobs[f"s-{n}"] = job(f"s-{n}", "Succeeded", best=1.0 + n)
    sweep.step()
    sweep.pod = {"status": {"phase": "Failed", "containerStatuses": [
        {"state": {"terminated": {"message": "s3://b/best/: access denied"}}}]}}
    sweep.step()
    assert sweep.status.phase == "Failed" and "access denied" in (sweep.status.message or "")
    assert sweep.status.promotion is not None and sweep.status.promotion.phase == "Failed"


def feed(sweep: Sweep, name: str, phase: str, curve: tuple[tuple[int, float], ...], best: float | None = None) -> SweepPlan:
    """The trial's evaluations one at a time, as the sweep sees its status change; a pass after each."""
    plan = None
    for i in range(1, len(curve) + 1):
        last = i == len(curve)
        sweep.jobs[name] = job(name, phase if last else "Running", best if last else None, curve[:i])
        plan = sweep.step()
    assert plan is not None
    return plan


def test_the_median_rule_prunes_a_trial_worse_than_the_finished_ones_at_the_same_step() -> None:
    sweep = Sweep(example())  # pruning: minTrials 2, startStep 8
    sweep.step()
    feed(sweep, "s-0", "Succeeded", ((4, 1.5), (8, 1.2), (16, 1.0)), best=1.0)
    feed(sweep, "s-1", "Succeeded", ((8, 1.3), (16, 1.1)), best=1.1)
    # s-2 and s-3 run now; s-2 is worse than both at step 8, s-3 better.
    plan = feed(sweep, "s-2", "Running", ((4, 1.9),))
    assert plan.prune == {}, "step 4 is before startStep 8"
    feed(sweep, "s-3", "Running", ((8, 1.1),))
    plan = feed(sweep, "s-2", "Running", ((8, 1.8),))
    assert list(plan.prune) == ["s-2"] and "worse than the median 1.25 of 2 finished trials" in plan.prune["s-2"]
    rows = {r.name: r for r in sweep.rows()}
    assert rows["s-2"].phase == "Pruned" and rows["s-3"].phase == "Running"
    assert any(e.reason == "TrialPruned" for e in plan.events)
    assert [r.name for r in plan.create] == ["s-4"]  # its place goes to the next trial
    # The trial, now suspended with the pruned mark, stays pruned and is not resumed.
    sweep.jobs["s-2"] = job("s-2", "Suspended", suspended=True)
    sweep.jobs["s-2"]["metadata"]["annotations"] = {"kubetune.io/pruned": plan.prune["s-2"]}
    plan = sweep.step()
    assert plan.prune == {} and plan.suspend == {}
    assert {r.name: r for r in sweep.rows()}["s-2"].phase == "Pruned"


def test_no_trial_is_pruned_before_min_trials_have_finished() -> None:
    spec = parse_sweep_spec(example())
    running = TrialRow(number=2, name="s-2", parameters={}, phase="Running", curve=[{"step": 8, "value": 9.0}])
    finished = TrialRow(number=0, name="s-0", parameters={}, phase="Succeeded", value=1.0,
                        curve=[{"step": 8, "value": 1.0}])
    assert median_rule(spec, running, [finished, running]) is None
    assert median_rule(spec, running, [finished, finished.model_copy(update={"number": 1}), running]) is not None


def test_suspending_a_sweep_suspends_its_running_trials_and_starts_none() -> None:
    sweep = Sweep(example())
    sweep.step()
    sweep.jobs = {n: job(n, "Running") for n in ("s-0", "s-1")}
    sweep.spec = parse_sweep_spec(example(suspend=True))
    plan = sweep.step()
    assert plan.suspend == {"s-0": True, "s-1": True} and plan.create == []
    sweep.jobs = {n: job(n, "Suspended", suspended=True) for n in ("s-0", "s-1")}
    sweep.step()
    assert sweep.status.phase == "Suspended"
    sweep.spec = parse_sweep_spec(example())
    assert sweep.step().suspend == {"s-0": False, "s-1": False}


def tpe_spec() -> dict[str, Any]:
    spec = example(maxTrials=8, parallelism=2, promote=None, pruning=None)
    spec["algorithm"] = {"type": "tpe", "seed": 7}
    spec["parameters"][0] = {"path": "training.learningRate", "range": {"min": 1e-4, "max": 1e-2, "scale": "log"}}
    return spec


def run_tpe(crash_after: int | None = None) -> list[TrialRow]:
    """A tpe sweep to the end, trials finishing oldest first; optionally the operator's memory lost
    (a new Sweep object from the stored status alone) after `crash_after` passes."""
    import math

    sweep = Sweep(tpe_spec())
    passes = 0
    while sweep.status.phase != "Succeeded":
        sweep.step()
        passes += 1
        if crash_after is not None and passes == crash_after:
            restarted = Sweep(tpe_spec())
            restarted.status, restarted.jobs = FineTuneSweepStatus.model_validate(sweep.status.to_manifest()), sweep.jobs
            sweep = restarted
        oldest = next((r for r in sweep.rows() if not r.done), None)
        if oldest is not None:
            lr = float(oldest.parameters["training.learningRate"])
            loss = abs(math.log10(lr) + 3) + float(oldest.parameters["method.lora.r"]) / 100
            sweep.jobs[oldest.name] = job(oldest.name, "Succeeded", best=loss, curve=((16, loss),))
        assert passes < 100
    return sweep.rows()


def test_tpe_suggestions_follow_from_the_seed_and_the_results_they_record() -> None:
    rows = run_tpe()
    assert len(rows) == 8 and len({tuple(sorted(r.parameters.items())) for r in rows}) == 8
    spec = parse_sweep_spec(tpe_spec())
    by_number = {r.number: r for r in rows}
    for row in rows:
        assert row.basis is not None
        basis = [by_number[n] for n in row.basis]
        assert suggest(spec, row.number, basis) == (row.parameters, row.basis)
    assert any(r.basis for r in rows[2:])  # later trials learned from earlier ones


@pytest.mark.parametrize("crash_after", [1, 3, 6])
def test_a_restarted_operator_continues_the_tpe_search_exactly(crash_after: int) -> None:
    assert [r.model_dump() for r in run_tpe(crash_after)] == [r.model_dump() for r in run_tpe()]
