"""The Argo CD and Flux health checks of docs/gitops.md, on recorded FineTuneJobs.

testdata/finetunejob-phases.yaml holds real objects the operator wrote, one per
phase; test_chart_install.py runs the same checks live on every version of its
jobs. Here also the cases a live run does not stage on demand.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from gitopscheck import (
    EXPECTED_HEALTH,
    argo_health,
    argo_health_script,
    assert_health_of,
    flux_health,
    flux_health_exprs,
    gitops_documents,
    kstatus_health,
)

RECORDED = [d for d in yaml.safe_load_all((Path(__file__).parent / "testdata" / "finetunejob-phases.yaml").read_text())
            if d]


def job(phase: str | None, generation: int = 1, observed: int = 1, message: str = "msg") -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                           "metadata": {"name": "j", "namespace": "ml", "generation": generation}}
    if phase is not None:
        obj["status"] = {"phase": phase, "observedGeneration": observed, "message": message}
    return obj


@pytest.mark.parametrize("obj", RECORDED, ids=lambda o: f"{(o.get('status') or {}).get('phase')}-rv{o['metadata']['resourceVersion']}")
def test_recorded_jobs(obj: dict[str, Any]) -> None:
    assert_health_of(obj)


def test_the_recordings_cover_every_phase() -> None:
    phases = {(o.get("status") or {}).get("phase") for o in RECORDED}
    assert phases == {None, *EXPECTED_HEALTH}


def test_a_job_the_operator_has_not_seen_is_progressing() -> None:
    assert argo_health(job(None)) == {"status": "Progressing",
                                      "message": "Waiting for the kubetune operator to pick up the job"}
    # A status without a phase (say the trainer's progress came first) is no verdict either.
    partial = {**job(None), "status": {"progress": {"step": 3}}}
    assert argo_health(partial)["status"] == "Progressing"
    assert flux_health(partial) == "InProgress"


def test_a_spec_change_not_yet_acted_on_is_progressing_whatever_the_phase() -> None:
    for phase in EXPECTED_HEALTH:
        stale = job(phase, generation=3, observed=2)
        assert argo_health(stale) == {"status": "Progressing",
                                      "message": "Waiting for the kubetune operator to act on generation 3"}
        assert flux_health(stale) == "InProgress"


@pytest.mark.parametrize(("phase", "argo", "flux"), [(p, a, f) for p, (a, f) in EXPECTED_HEALTH.items()])
def test_each_phase(phase: str, argo: str, flux: str) -> None:
    assert argo_health(job(phase, message=f"the {phase} message")) == {"status": argo,
                                                                        "message": f"the {phase} message"}
    assert flux_health(job(phase)) == flux


def test_an_unknown_phase_is_unknown_to_argo_cd_and_in_progress_to_flux() -> None:
    assert argo_health(job("Exploding", message="boom")) == {"status": "Unknown",
                                                             "message": "Unknown phase Exploding: boom"}
    assert flux_health(job("Exploding")) == "InProgress"


def test_wait_for_completion_keeps_a_running_job_progressing() -> None:
    script = argo_health_script()
    assert "local waitForCompletion = false" in script
    waiting = script.replace("local waitForCompletion = false", "local waitForCompletion = true")
    assert argo_health(job("Running"), waiting)["status"] == "Progressing"
    assert argo_health(job("Succeeded"), waiting)["status"] == "Healthy"


def test_flux_expressions_can_wait_for_completion() -> None:
    exprs = {**flux_health_exprs(), "current": "status.phase == 'Succeeded'"}
    assert flux_health(job("Running"), exprs) == "InProgress"
    assert flux_health(job("Succeeded"), exprs) == "Current"


def test_kstatus_alone_agrees_on_the_recorded_jobs() -> None:
    """Flux without healthCheckExprs reads the kstatus conditions; same verdicts."""
    for obj in RECORDED:
        if (obj.get("status") or {}).get("phase"):
            assert kstatus_health(obj) == flux_health(obj), obj["status"]["phase"]


def test_the_doc_table_matches_the_checks() -> None:
    from gitopscheck import GITOPS_DOC

    text = GITOPS_DOC.read_text()
    for phase, (argo, flux) in EXPECTED_HEALTH.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{phase}`"))
        assert f"| {argo}" in row and row.rstrip(" |").endswith(flux), row


def test_the_doc_snippets_are_well_formed() -> None:
    kinds = {d["kind"] for d in gitops_documents()}
    assert {"ConfigMap", "Kustomization", "Application", "HelmRelease"} <= kinds
    # Argo CD accepts a script only if it returns a table for any input; a deep copy keeps
    # the recorded objects untouched by Lua.
    for obj in RECORDED:
        assert set(argo_health(copy.deepcopy(obj))) == {"status", "message"}


SWEEP_HEALTH = {  # phase: (Argo CD, Flux), as docs/gitops.md's table says
    "Pending": ("Progressing", "InProgress"),
    "Running": ("Progressing", "InProgress"),
    "Suspended": ("Suspended", "Current"),
    "Succeeded": ("Healthy", "Current"),
    "Failed": ("Degraded", "Failed"),
}


@pytest.mark.parametrize(("phase", "argo", "flux"), [(p, a, f) for p, (a, f) in SWEEP_HEALTH.items()])
def test_each_phase_of_a_sweep(phase: str, argo: str, flux: str) -> None:
    from gitopscheck import ARGO_SWEEP_HEALTH_KEY, argo_health_script, flux_health_exprs

    sweep = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSweep",
             "metadata": {"name": "s", "generation": 1},
             "status": {"observedGeneration": 1, "phase": phase, "message": f"{phase} message"}}
    assert argo_health(sweep, argo_health_script(ARGO_SWEEP_HEALTH_KEY)) == {"status": argo, "message": f"{phase} message"}
    assert flux_health(sweep, flux_health_exprs("FineTuneSweep")) == flux
    fresh = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSweep", "metadata": {"name": "s", "generation": 1}}
    assert argo_health(fresh, argo_health_script(ARGO_SWEEP_HEALTH_KEY))["status"] == "Progressing"
    assert flux_health(fresh, flux_health_exprs("FineTuneSweep")) == "InProgress"
