"""Every kopf handler of the operator, registered in this one module.

Handlers are glue: they unpack kopf's arguments and call the `Reconciler`
(reconcile.py), which reads the job fresh and is safe to run any number of
times. They make no API calls themselves; they only configure the API client
once, at startup. Handler ids are part of the operator's API (kopf tracks
progress under them), so each has an explicit, stable `id=`.

What wakes a reconcile of a job:
  - the job is created, its spec changes, or the operator (re)starts;
  - any of its worker pods changes (pods carry the job-name label);
  - its Kueue Workload changes (admitted, evicted), when the Kueue integration is on;
  - the operator-wide resync loop (resync.py), for deadlines and TTLs and as
    a safety net. It is deliberately not a kopf timer: kopf keeps a finalizer
    on every object that has a timer, and a FineTuneJob should never be stuck
    in deletion because its operator is down. It starts with kopf (`configure`),
    so, like the handlers, it runs only in the replica that holds the Lease.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from kubetune_api.constants import GROUP, JOB_NAME_LABEL, PLURAL, VERSION
from kubetune_api.sweep import SWEEP_LABEL, SWEEP_PLURAL

from .kueue import KUEUE_GROUP, KUEUE_VERSION, WORKLOADS
from .reconcile import Reconciler
from .resync import ResyncLoop
from .settings import Settings
from .sweeps import SweepReconciler

log = logging.getLogger(__name__)
SETTINGS = Settings.from_env()


def api_client(pool_size: int) -> Any:
    """A client of the cluster the operator runs in (a pod's in-cluster configuration), else of KUBECONFIG."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


@kopf.on.startup(id="configure")
def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    # The operator records its own Events; kopf's per-handler ones would be noise.
    settings.posting.enabled = False
    settings.execution.max_workers = SETTINGS.workers
    if SETTINGS.namespaces:
        # Namespaced install: no cluster-wide rights to scan namespaces and CRDs, and no need to.
        settings.scanning.disabled = True
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    client = api_client(SETTINGS.workers + 2)
    memo.reconciler = Reconciler(client, SETTINGS.trainer_image, SETTINGS.api_qps, SETTINGS.api_burst,
                                 kueue=SETTINGS.kueue)
    memo.sweeps = SweepReconciler(client, SETTINGS.trainer_image, SETTINGS.api_qps, SETTINGS.api_burst)
    memo.resync = ResyncLoop(memo.reconciler, SETTINGS)
    memo.resync.start()


@kopf.on.cleanup(id="stop-resync")
def stop_resync(memo: Any, **_: Any) -> None:
    stop_resync_loop(memo)


def stop_resync_loop(memo: Any) -> None:
    """Stop the resync loop, if `configure` got as far as starting it (idempotent)."""
    resync = getattr(memo, "resync", None)
    if resync is not None:
        resync.stop()


def _run(memo: Any, namespace: str | None, name: str) -> None:
    assert namespace, "FineTuneJobs are namespaced"
    try:
        memo.reconciler.reconcile(namespace, name)
    except ApiException as e:
        # Transient (a conflict, a timeout, the API server restarting): try again soon.
        raise kopf.TemporaryError(f"reconcile of {namespace}/{name}: API error {e.status} {e.reason}", delay=5) from e


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile-on-resume")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile-on-create")
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", id="reconcile-on-spec-change")
def on_job(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    _run(memo, namespace, name)


@kopf.on.event("v1", "pods", labels={JOB_NAME_LABEL: kopf.PRESENT}, id="worker-changed")
def on_worker(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    _wake(memo, namespace, labels[JOB_NAME_LABEL], "a worker change")


def _wake(memo: Any, namespace: str | None, job: str, what: str) -> None:
    assert namespace, "pods and Workloads are namespaced"
    try:
        memo.reconciler.reconcile(namespace, job)
    except ApiException as e:
        log.warning("reconcile of %s/%s after %s failed: %s; the resync will retry", namespace, job, what, e.reason)


def on_workload(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    """Kueue admitted, evicted or requeued a job's Workload (it carries the job-name label)."""
    _wake(memo, namespace, labels[JOB_NAME_LABEL], "a Workload change")


if SETTINGS.kueue:
    kopf.on.event(KUEUE_GROUP, KUEUE_VERSION, WORKLOADS, labels={JOB_NAME_LABEL: kopf.PRESENT},
                  id="workload-changed")(on_workload)


def _sweep(memo: Any, namespace: str | None, name: str) -> None:
    assert namespace, "FineTuneSweeps are namespaced"
    try:
        memo.sweeps.reconcile(namespace, name)
    except ApiException as e:
        raise kopf.TemporaryError(f"reconcile of sweep {namespace}/{name}: API error {e.status} {e.reason}",
                                  delay=5) from e


@kopf.on.resume(GROUP, VERSION, SWEEP_PLURAL, id="sweep-on-resume")
@kopf.on.create(GROUP, VERSION, SWEEP_PLURAL, id="sweep-on-create")
@kopf.on.update(GROUP, VERSION, SWEEP_PLURAL, field="spec", id="sweep-on-spec-change")
def on_sweep(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    _sweep(memo, namespace, name)


@kopf.on.event(GROUP, VERSION, PLURAL, labels={SWEEP_LABEL: kopf.PRESENT}, id="trial-changed")
@kopf.on.event("v1", "pods", labels={SWEEP_LABEL: kopf.PRESENT}, id="promotion-changed")
def on_trial(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    """A trial (a FineTuneJob) or the promotion pod of a sweep changed: look at the sweep."""
    assert namespace, "trials are namespaced"
    try:
        memo.sweeps.reconcile(namespace, labels[SWEEP_LABEL])
    except ApiException as e:
        log.warning("reconcile of sweep %s/%s after a trial change failed: %s", namespace,
                    labels[SWEEP_LABEL], e.reason)
