"""One reconcile pass of a FineTuneSweep: fetch -> decide (sweepplan.py) -> act -> status.

Like reconcile.py for jobs: the sweep is read fresh, its trials are listed by
label, the plan is pure, and passes over one sweep never overlap. The order of
the writes is what keeps a crash harmless: the status (with the rows of new
trials and their parameters) is written first, then the trials are created
(create if absent), then trials are pruned, suspended or resumed, then the
promotion pod is created.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import ValidationError

from kubetune_api import Manifest, SpecError, utc_now
from kubetune_api.constants import API_VERSION, KIND
from kubetune_api.sweep import (
    INHERITED_LABEL_PREFIXES,
    PRUNED_ANNOTATION,
    SWEEP_KIND,
    SWEEP_LABEL,
    TRIAL_LABEL,
    FineTuneSweepSpec,
    FineTuneSweepStatus,
    SweepPhase,
    TrialRow,
    parse_sweep_spec,
    trial_spec_manifest,
)

from .kube import Kube
from .plan import Event
from .reconcile import JobKey, _Slot, run_coalesced
from .status import condition
from .sweepplan import SweepObserved, SweepPlan, plan_sweep, promotion_result
from .workers import DEFAULT_TRAINER_IMAGE, TRAINER_CONTAINER, WORKER_UID, worker_env

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)

PROMOTION_COMPONENT = "promotion"


def read_sweep_status(raw: object) -> FineTuneSweepStatus:
    """The stored status, typed; an unreadable one reads as empty (the CRD's schema guards it)."""
    try:
        return FineTuneSweepStatus.model_validate(raw or {})
    except ValidationError:
        return FineTuneSweepStatus()


def owner_reference(sweep: Manifest) -> Manifest:
    return {"apiVersion": API_VERSION, "kind": SWEEP_KIND, "name": sweep["metadata"]["name"],
            "uid": sweep["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def build_trial(sweep: Manifest, spec: FineTuneSweepSpec, row: TrialRow) -> Manifest:
    """The trial's FineTuneJob: the template with its parameters, owned by the sweep, its objective as
    the evaluation metric (so status.evaluation.best is the sweep's result), suspended with the sweep."""
    meta = sweep["metadata"]
    doc = trial_spec_manifest(spec.template, row.name, row.parameters)
    doc.setdefault("evaluation", {})["metric"] = spec.metric
    doc.setdefault("runPolicy", {})["suspend"] = spec.suspend
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k.startswith(INHERITED_LABEL_PREFIXES)}
    labels.update({SWEEP_LABEL: meta["name"], TRIAL_LABEL: str(row.number)})
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": row.name, "namespace": meta["namespace"], "labels": labels,
                     "annotations": {"kubetune.io/parameters": json.dumps(row.parameters, sort_keys=True)},
                     "ownerReferences": [owner_reference(sweep)]},
        "spec": doc,
    }


def build_promotion_pod(sweep: Manifest, spec: FineTuneSweepSpec, status: FineTuneSweepStatus,
                        trial: Manifest | None, default_image: str = DEFAULT_TRAINER_IMAGE) -> Manifest:
    """A CPU-only pod of the trainer image that copies the best trial's output to spec.promote.uri
    (kubetune_trainer.promote), with the template's storage settings and Secret."""
    from .children import JobRef

    assert spec.promote is not None and status.best is not None
    meta = sweep["metadata"]
    best = status.best
    trial_spec = (trial or {}).get("spec") or {}
    source = (((trial or {}).get("status") or {}).get("output") or {}).get("uri") or (
        (trial_spec.get("output") or {}).get("uri") or spec.template.output.uri.rstrip("/") + f"/{best.name}/")
    args = ["-m", "kubetune_trainer.promote", "--source", source, "--target", spec.promote.uri,
            "--storage", json.dumps(spec.template.storage.to_manifest(), sort_keys=True),
            "--result", promotion_result(spec, meta["name"], meta["namespace"], best)]
    checkpoints = (trial_spec.get("checkpoint") or {}).get("uri") or source.rstrip("/") + "/checkpoints/"
    if checkpoints.startswith(source):
        args += ["--exclude", checkpoints[len(source):]]
    ref = JobRef(name=best.name, namespace=meta["namespace"], uid=meta["uid"])
    env = [e for e in worker_env(ref, spec.template, 1) if e["name"].startswith(("AWS_", "PYTHON"))]
    labels = {SWEEP_LABEL: meta["name"], "app.kubernetes.io/name": "kubetune",
              "app.kubernetes.io/component": PROMOTION_COMPONENT, "app.kubernetes.io/managed-by": "kubetune-operator"}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{meta['name']}-promote", "namespace": meta["namespace"], "labels": labels,
                     "ownerReferences": [owner_reference(sweep)]},
        "spec": {
            "restartPolicy": "Never",  # a failed copy fails the promotion (storage errors are retried inside)
            "enableServiceLinks": False,
            "containers": [{
                "name": TRAINER_CONTAINER,
                "image": spec.template.image or default_image,
                "command": ["python"],
                "args": args,
                "env": env,
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "runAsNonRoot": True},
            }],
            "securityContext": {"runAsNonRoot": True, "runAsUser": WORKER_UID, "runAsGroup": WORKER_UID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
        },
    }


class SweepReconciler:
    """Reconciles FineTuneSweeps, one pass per sweep at a time."""

    def __init__(self, api_client: ApiClient, trainer_image: str = DEFAULT_TRAINER_IMAGE,
                 qps: float = 50.0, burst: int = 100) -> None:
        self._kube = Kube(api_client, qps, burst)
        self.trainer_image = trainer_image
        self._slots: defaultdict[JobKey, _Slot] = defaultdict(_Slot)
        self._guard = threading.Lock()

    def reconcile(self, namespace: str, name: str, now: datetime | None = None) -> SweepPlan | None:
        with self._guard:
            slot = self._slots[(namespace, name)]
        return run_coalesced(slot, lambda: self._pass(namespace, name, now or utc_now()))

    def _pass(self, namespace: str, name: str, now: datetime) -> SweepPlan | None:
        kube = self._kube
        sweep = kube.get_sweep(namespace, name)
        if sweep is None or sweep["metadata"].get("deletionTimestamp"):
            with self._guard:
                self._slots.pop((namespace, name), None)
            return None
        meta = sweep["metadata"]
        stored = read_sweep_status(sweep.get("status"))
        generation = int(meta.get("generation", 1))
        try:
            spec = parse_sweep_spec(sweep.get("spec"))
        except SpecError as e:
            self._invalid(sweep, stored, str(e), generation, now)
            return None
        trials = kube.list_trials(namespace, name)
        pods = [p for p in kube.list_sweep_pods(namespace, name)
                if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == PROMOTION_COMPONENT]
        seen = SweepObserved(name=name, generation=generation, status=stored, trials=trials,
                             promotion_pod=pods[0] if pods else None, now=now)
        plan = plan_sweep(spec, seen)

        new = plan.status.to_manifest()
        if new != (sweep.get("status") or {}):
            kube.patch_sweep_status(namespace, name, new)  # rows first, then their trials
        for row in plan.create:
            kube.create_job(build_trial(sweep, spec, row))
        for pruned, why in plan.prune.items():
            kube.patch_job(namespace, pruned, {"metadata": {"annotations": {PRUNED_ANNOTATION: why[:1000]}},
                                              "spec": {"runPolicy": {"suspend": True}}})
        for name_, suspend in plan.suspend.items():
            kube.patch_job(namespace, name_, {"spec": {"runPolicy": {"suspend": suspend}}})
        if plan.promote and not pods:
            best = plan.status.best
            trial = next((t for t in trials if best is not None and t["metadata"]["name"] == best.name), None)
            kube.create_if_absent(build_promotion_pod(sweep, spec, plan.status, trial, self.trainer_image))
        self._record(sweep, plan.events)
        return plan

    def _invalid(self, sweep: Manifest, stored: FineTuneSweepStatus, message: str, generation: int,
                 now: datetime) -> None:
        if stored.phase == SweepPhase.FAILED and stored.message == message:
            return
        meta = sweep["metadata"]
        failed = condition(stored, "Failed", "True", "InvalidSpec", message, now, generation)  # type: ignore[arg-type]
        running = condition(stored, "Running", "False", "InvalidSpec", message, now, generation)  # type: ignore[arg-type]
        status = stored.model_copy(update={"phase": SweepPhase.FAILED, "message": message,
                                           "conditions": [running, failed], "observed_generation": generation,
                                           "completion_time": stored.completion_time or now})
        self._kube.patch_sweep_status(meta["namespace"], meta["name"], status.to_manifest())
        self._record(sweep, [Event("Warning", "InvalidSpec", message)])

    def _record(self, sweep: Manifest, events: list[Event]) -> None:
        meta = sweep["metadata"]
        for event in events:
            log.info("%s/%s: %s: %s", meta["namespace"], meta["name"], event.reason, event.message)
            self._kube.record_event(sweep, event.type, event.reason, event.message)
