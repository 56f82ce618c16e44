"""The GitOps health checks of docs/gitops.md, run the way Argo CD and Flux run them.

The Argo CD check is Lua, run with Lua 5.1 (what Argo CD's gopher-lua
implements, here through lupa); the Flux check is CEL expressions, evaluated
with cel-python in the order Flux's kustomize-controller evaluates them.
Both are read from the ```yaml blocks of docs/gitops.md, so the text a user
copies is the text tested.
"""

from __future__ import annotations

import json
import re

import yaml

from kubetune_api import Manifest
from kubetune_testbed import REPO

GITOPS_DOC = REPO / "docs" / "gitops.md"
ARGO_HEALTH_KEY = "resource.customizations.health.kubetune.io_FineTuneJob"
ARGO_SWEEP_HEALTH_KEY = "resource.customizations.health.kubetune.io_FineTuneSweep"



def gitops_documents() -> list[Manifest]:
    """The YAML manifests in docs/gitops.md's ```yaml blocks."""
    blocks = re.findall(r"```yaml\n(.*?)```", GITOPS_DOC.read_text(), flags=re.S)
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]


def argo_health_script(key: str = ARGO_HEALTH_KEY) -> str:
    cm = next(d for d in gitops_documents() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "argocd-cm")
    return str(cm["data"][key])


def flux_health_exprs(kind: str = "FineTuneJob") -> dict[str, str]:
    kustomization = next(d for d in gitops_documents() if d["kind"] == "Kustomization")
    exprs = [e for e in kustomization["spec"]["healthCheckExprs"] if e["kind"] == kind]
    assert len(exprs) == 1
    return {k: v for k, v in exprs[0].items() if k in ("inProgress", "failed", "current")}


def argo_health(obj: Manifest, script: str | None = None) -> dict[str, str]:
    """Run the Argo CD health script on `obj` with Lua 5.1 (the version Argo CD's gopher-lua speaks)."""
    from lupa import lua51

    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    hs = lua.execute(script if script is not None else argo_health_script())
    return {"status": hs["status"], "message": hs["message"]}


def flux_health(obj: Manifest, exprs: dict[str, str] | None = None) -> str:
    """Flux's verdict (InProgress, Failed, Current) from healthCheckExprs, in Flux's order.

    As fluxcd/pkg runtime/cel StatusEvaluator: a status.observedGeneration behind
    metadata.generation is InProgress; then inProgress, failed and current are
    evaluated in that order, the first true one wins; none: InProgress.
    """
    import celpy

    exprs = exprs or flux_health_exprs()
    status, meta = obj.get("status") or {}, obj.get("metadata") or {}
    if "observedGeneration" in status and "generation" in meta and status["observedGeneration"] != meta["generation"]:
        return "InProgress"
    env = celpy.Environment()
    # Flux hands the object's top-level fields to the expressions as variables.
    activation = {key: celpy.json_to_cel(value) for key, value in json.loads(json.dumps(obj)).items()}
    for key, verdict in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        if key in exprs:
            result = env.program(env.compile(exprs[key])).evaluate(activation)
            if isinstance(result, Exception):
                raise result
            if bool(result):
                return verdict
    return "InProgress"


def kstatus_health(obj: Manifest) -> str:
    """kstatus's generic verdict from the conditions alone (what Flux uses without expressions)."""
    status, meta = obj.get("status") or {}, obj.get("metadata") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return "InProgress"
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or ()}
    if conditions.get("Reconciling") == "True":
        return "InProgress"
    if conditions.get("Stalled") == "True":
        return "Failed"
    return "Current"


# What each phase means to Argo CD and Flux (the table in docs/gitops.md).
EXPECTED_HEALTH = {
    "Queued": ("Progressing", "InProgress"),
    "Pending": ("Progressing", "InProgress"),
    "Restarting": ("Progressing", "InProgress"),
    "Running": ("Healthy", "Current"),
    "Suspended": ("Suspended", "Current"),
    "Succeeded": ("Healthy", "Current"),
    "Failed": ("Degraded", "Failed"),
}


def assert_health_of(obj: Manifest) -> str:
    """Check the Argo CD, Flux and kstatus verdicts on one FineTuneJob; returns its phase."""
    phase = (obj.get("status") or {}).get("phase")
    caught_up = (obj.get("status") or {}).get("observedGeneration") == obj["metadata"].get("generation")
    argo, flux = EXPECTED_HEALTH[phase] if phase and caught_up else ("Progressing", "InProgress")
    got = argo_health(obj)
    assert got["status"] == argo, f"Argo CD health of a {phase} job: {got}"
    if phase and caught_up:
        assert got["message"] == obj["status"].get("message", phase)
        assert flux_health(obj) == flux, f"Flux health of a {phase} job"
        assert kstatus_health(obj) == flux, f"kstatus health of a {phase} job"
    return str(phase)
