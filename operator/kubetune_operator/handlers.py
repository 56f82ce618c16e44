"""Every kopf handler of the operator, registered in this one module.

FineTuneJobs and their worker pods are not kopf's: two informers (informer.py)
keep the operator's view of them, server-side filtered to worker pods, and
queue a reconcile of the job for every change they see. A pass (reconcile.py)
decides from that view and only writes, so a steadily running job costs no API
request. kopf runs what is left: the startup and cleanup hooks, the
FineTuneSweeps, and the wake-ups from Kueue's Workloads. kopf's own watches are
filtered on the server by label too (sweep trials, sweep pods, Workloads of
jobs). Handler ids are part of the operator's API (kopf tracks progress under
them), so each has an explicit, stable `id=`.

What queues a reconcile of a job:
  - the job is created, changes (its spec, its status, its labels) or is deleted,
    and every job once when the operator starts (the informer's first LIST);
  - any of its worker pods changes (pods carry the job-name label), batched:
    the changes of POD_BATCH_SECONDS make one pass;
  - its Kueue Workload changes (admitted, evicted), when the Kueue integration is on;
  - a pass that failed on an API error, RETRY_SECONDS later;
  - the operator-wide resync loop (resync.py), for deadlines and TTLs and as
    a safety net. It is deliberately not a kopf timer: kopf keeps a finalizer
    on every object that has a timer, and a FineTuneJob should never be stuck
    in deletion because its operator is down.
All of it starts with kopf (`configure`), so, like the handlers, it runs only in
the replica that holds the Lease.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from kubetune_api.constants import GROUP, JOB_NAME_LABEL, PLURAL, VERSION
from kubetune_api.sweep import SWEEP_LABEL, SWEEP_PLURAL

from .informer import Informer, Store, View, WorkQueue
from .kueue import KUEUE_GROUP, KUEUE_VERSION, WORKLOADS
from .reconcile import Reconciler
from .resync import ResyncLoop
from .settings import Settings
from .sweeps import SweepReconciler

log = logging.getLogger(__name__)
SETTINGS = Settings.from_env()
RETRY_SECONDS = 5.0
POD_BATCH_SECONDS = 1.0  # pod changes of a job within this long make one pass (the Job controller's batch period)
STARTUP_WAIT_SECONDS = 60.0


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
    # kopf watches only what its handlers below are for, filtered on the server.
    settings.watching.label_selectors[GROUP, PLURAL] = SWEEP_LABEL
    settings.watching.label_selectors["v1", "pods"] = SWEEP_LABEL
    settings.watching.label_selectors[KUEUE_GROUP, WORKLOADS] = JOB_NAME_LABEL
    # The operator records its own Events; kopf's per-handler ones would be noise.
    settings.posting.enabled = False
    settings.execution.max_workers = SETTINGS.workers
    if SETTINGS.namespaces:
        # Namespaced install: no cluster-wide rights to scan namespaces and CRDs, and no need to.
        settings.scanning.disabled = True
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    client = api_client(2 * SETTINGS.workers + 4)  # passes from the queue and the resync loop, two watches
    view = View(jobs=Store(), pods=Store(index=lambda pod: (pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL)))
    reconciler = Reconciler(client, SETTINGS.trainer_image, SETTINGS.api_qps, SETTINGS.api_burst,
                            kueue=SETTINGS.kueue, view=view)
    memo.reconciler = reconciler
    memo.queue = queue = WorkQueue(lambda key: _reconcile_queued(memo, key), SETTINGS.workers)
    memo.informers = [
        Informer("pods", reconciler.kube.list_calls("pods", SETTINGS.namespaces), view.pods,
                 lambda pod: queue.add_after((pod["metadata"]["namespace"], pod["metadata"]["labels"][JOB_NAME_LABEL]),
                                             POD_BATCH_SECONDS),
                 label_selector=JOB_NAME_LABEL),
        Informer("jobs", reconciler.kube.list_calls("jobs", SETTINGS.namespaces), view.jobs,
                 lambda job: queue.add((job["metadata"]["namespace"], job["metadata"]["name"]))),
    ]
    memo.sweeps = SweepReconciler(client, SETTINGS.trainer_image, SETTINGS.api_qps, SETTINGS.api_burst)
    memo.resync = ResyncLoop(reconciler, SETTINGS)
    queue.start()
    for informer in memo.informers:
        informer.start()
    memo.resync.start()


@kopf.on.cleanup(id="stop-resync")
def stop_resync(memo: Any, **_: Any) -> None:
    stop_resync_loop(memo)


def stop_resync_loop(memo: Any) -> None:
    """Stop the resync loop, the informers and the queue, if `configure` got as far as starting them
    (idempotent)."""
    resync = getattr(memo, "resync", None)
    if resync is not None:
        resync.stop()
    for informer in getattr(memo, "informers", ()):
        informer.stop()
    queue = getattr(memo, "queue", None)
    if queue is not None:
        queue.stop()
    reconciler = getattr(memo, "reconciler", None)
    if reconciler is not None:
        reconciler.kube.events.flush(timeout=5)  # the last Events of a stopping operator still go out


def _reconcile_queued(memo: Any, key: tuple[str, str]) -> None:
    """One queued reconcile; an API error (a conflict, a timeout, the API server restarting) queues it again
    RETRY_SECONDS later."""
    # At start-up the first passes wait for the worker pods to be listed rather than each reading its own.
    memo.reconciler.view.pods.synced.wait(STARTUP_WAIT_SECONDS)
    try:
        memo.reconciler.reconcile(*key)
    except ApiException as e:
        log.warning("reconcile of %s/%s failed: API error %s %s; again in %.0f s", *key, e.status, e.reason,
                    RETRY_SECONDS)
        timer = threading.Timer(RETRY_SECONDS, memo.queue.add, (key,))
        timer.daemon = True
        timer.start()


def on_workload(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    """Kueue admitted, evicted or requeued a job's Workload (it carries the job-name label)."""
    assert namespace, "Workloads are namespaced"
    memo.queue.add((namespace, labels[JOB_NAME_LABEL]))


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
