"""The operator's only door to the Kubernetes API.

Only reconcile.py uses it; everything below reconcile is pure. It reads jobs
and pods, creates children if absent, deletes pods (guarded by their uid, so a
newer pod of the same name is never hit), patches status and records Events. Calls are
rate limited on the client side (QPS with a burst), and every API error is
counted by operation for the metrics.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune_api import Manifest, utc_now
from kubetune_api.constants import GROUP, JOB_NAME_LABEL, KIND, PLURAL, VERSION
from kubetune_api.sweep import SWEEP_LABEL, SWEEP_PLURAL

from . import metrics
from .kueue import KUEUE_GROUP, KUEUE_VERSION, WORKLOADS


def _object_missing(e: ApiException) -> bool:
    """A 404 for an object of a served resource (a Status naming it), not for a resource the API
    server does not know (its plain "404 page not found")."""
    try:
        body = json.loads(e.body or "")
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("kind") == "Status" and bool((body.get("details") or {}).get("name"))


def _manifest(response: Any) -> Manifest:
    """The JSON body of a call made with `_preload_content=False`."""
    found: Manifest = json.loads(response.data)
    return found


class RateLimiter:
    """A token bucket: `qps` calls per second on average, up to `burst` at once."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps, self.burst = qps, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.qps)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.qps
            time.sleep(wait)


class Kube:
    def __init__(self, api_client: client.ApiClient, qps: float = 50.0, burst: int = 100) -> None:
        self.core = client.CoreV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.limiter = RateLimiter(qps, burst)
        self.requests = 0  # API calls made, for the benchmark and metrics

    def _call(self, operation: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.limiter.acquire()
        self.requests += 1
        metrics.API_REQUESTS.labels(operation).inc()
        try:
            return fn(*args, **kwargs)
        except ApiException as e:
            if e.status not in (404, 409):
                metrics.API_ERRORS.labels(operation, str(e.status)).inc()
            raise

    # ---------------------------------------------------------------- reads
    def get_job(self, namespace: str, name: str) -> Manifest | None:
        try:
            job: Manifest = self._call("get_job", self.custom.get_namespaced_custom_object,
                                       GROUP, VERSION, namespace, PLURAL, name)
            return job
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list_jobs(self, namespaces: tuple[str, ...] = ()) -> list[Manifest]:
        """Every FineTuneJob in the watched namespaces (all of them when none are given)."""
        if not namespaces:
            found = self._call("list_jobs", self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
            return list(found["items"])
        jobs: list[Manifest] = []
        for ns in namespaces:
            found = self._call("list_jobs", self.custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL)
            jobs += found["items"]
        return jobs

    def list_calls(self, resource: str, namespaces: tuple[str, ...] = ()) -> dict[str | None, Callable[..., Any]]:
        """LIST (and, with watch=True, WATCH) calls of FineTuneJobs ("jobs") or pods ("pods") for an informer:
        one per watched namespace, or one for the whole cluster (key None) when none are given."""
        def counted(fn: Callable[..., Any]) -> Callable[..., Any]:
            return lambda **kw: self._call(f"{'watch' if kw.get('watch') else 'list'}_{resource}", fn, **kw)

        if resource == "jobs":
            if not namespaces:
                return {None: counted(partial(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL))}
            return {ns: counted(partial(self.custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL))
                    for ns in namespaces}
        if not namespaces:
            return {None: counted(self.core.list_pod_for_all_namespaces)}
        return {ns: counted(partial(self.core.list_namespaced_pod, ns)) for ns in namespaces}

    def list_workers(self, namespace: str, job: str) -> list[Manifest]:
        # Raw JSON: the pods are handled as plain manifests, like everything else in the operator.
        pods: Any = self._call("list_pods", self.core.list_namespaced_pod, namespace,
                               label_selector=f"{JOB_NAME_LABEL}={job}", _preload_content=False)
        return list(_manifest(pods)["items"])

    # ---------------------------------------------------------------- writes
    def create_if_absent(self, manifest: Manifest) -> Manifest | None:
        """Create the object and return it as the API server stored it; None (and no error) when one of that
        name exists."""
        kind, ns = manifest["kind"], manifest["metadata"]["namespace"]
        creators: dict[str, Callable[..., Any]] = {
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "ConfigMap": self.core.create_namespaced_config_map,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
        }
        create = creators[kind]
        try:
            created: Any = self._call(f"create_{kind.lower()}", create, ns, manifest, _preload_content=False)
            return _manifest(created)
        except ApiException as e:
            if e.status == 409:
                return None
            raise

    def delete_pod(self, namespace: str, name: str, uid: str, grace_seconds: int | None = None) -> Manifest | None:
        """Delete a pod (its own grace period unless `grace_seconds`); the pod as the deletion left it
        (terminating), or None when it is gone already."""
        body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid),
                                      grace_period_seconds=grace_seconds)
        try:
            deleted: Any = self._call("delete_pod", self.core.delete_namespaced_pod, name, namespace, body=body,
                                      _preload_content=False)
        except ApiException as e:
            # Gone already, or a different pod now has that name: nothing to do.
            if e.status not in (404, 409):
                raise
            return None
        pod = _manifest(deleted)
        return pod if pod.get("kind") == "Pod" else None

    def patch_status(self, namespace: str, name: str, status: Manifest) -> Manifest:
        """A JSON merge patch of the job's .status: keys not in `status` keep their values. Returns the job."""
        job: Manifest = self._call("patch_status", self.custom.patch_namespaced_custom_object_status,
                                   GROUP, VERSION, namespace, PLURAL, name, {"status": status})
        return job

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        body = client.V1DeleteOptions(propagation_policy="Background",
                                      preconditions=client.V1Preconditions(uid=uid))
        try:
            self._call("delete_job", self.custom.delete_namespaced_custom_object,
                       GROUP, VERSION, namespace, PLURAL, name, body=body)
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    # ---------------------------------------------------------------- Kueue (kueue.py)
    def get_workload(self, namespace: str, name: str) -> tuple[Manifest | None, bool]:
        """(the Workload or None, whether the API server serves Workloads at all: Kueue is installed)."""
        try:
            wl: Manifest = self._call("get_workload", self.custom.get_namespaced_custom_object,
                                      KUEUE_GROUP, KUEUE_VERSION, namespace, WORKLOADS, name)
            return wl, True
        except ApiException as e:
            if e.status == 404:
                return None, _object_missing(e)
            raise

    def create_workload(self, manifest: Manifest) -> None:
        try:
            self._call("create_workload", self.custom.create_namespaced_custom_object, KUEUE_GROUP, KUEUE_VERSION,
                       manifest["metadata"]["namespace"], WORKLOADS, manifest)
        except ApiException as e:
            if e.status != 409:
                raise

    def patch_workload(self, namespace: str, name: str, patch: Manifest, status: bool = False) -> bool:
        """A merge patch of a Workload (or of its status); False when it conflicted with a newer
        version (a patch carrying resourceVersion) or the Workload is gone: the next pass retries."""
        method = (self.custom.patch_namespaced_custom_object_status if status
                  else self.custom.patch_namespaced_custom_object)
        try:
            self._call("patch_workload", method, KUEUE_GROUP, KUEUE_VERSION, namespace, WORKLOADS, name, patch)
            return True
        except ApiException as e:
            if e.status in (404, 409):
                return False
            raise

    def get_kueue_object(self, plural: str, name: str) -> Manifest | None:
        """A cluster-scoped Kueue object (a ResourceFlavor, a WorkloadPriorityClass), or None."""
        try:
            found: Manifest = self._call(f"get_{plural}", self.custom.get_cluster_custom_object,
                                         KUEUE_GROUP, KUEUE_VERSION, plural, name)
            return found
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    # ---------------------------------------------------------------- sweeps and their trials
    def get_sweep(self, namespace: str, name: str) -> Manifest | None:
        try:
            sweep: Manifest = self._call("get_sweep", self.custom.get_namespaced_custom_object,
                                         GROUP, VERSION, namespace, SWEEP_PLURAL, name)
            return sweep
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list_trials(self, namespace: str, sweep: str) -> list[Manifest]:
        found = self._call("list_jobs", self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace,
                           PLURAL, label_selector=f"{SWEEP_LABEL}={sweep}")
        return list(found["items"])

    def list_sweep_pods(self, namespace: str, sweep: str) -> list[Manifest]:
        pods: Any = self._call("list_pods", self.core.list_namespaced_pod, namespace,
                               label_selector=f"{SWEEP_LABEL}={sweep}", _preload_content=False)
        return list(_manifest(pods)["items"])

    def create_job(self, manifest: Manifest) -> bool:
        """Create a FineTuneJob; False (and no error) when one of that name exists."""
        try:
            self._call("create_job", self.custom.create_namespaced_custom_object, GROUP, VERSION,
                       manifest["metadata"]["namespace"], PLURAL, manifest)
            return True
        except ApiException as e:
            if e.status == 409:
                return False
            raise

    def patch_job(self, namespace: str, name: str, patch: Manifest) -> None:
        """A JSON merge patch of a FineTuneJob (its spec.runPolicy, its annotations)."""
        try:
            self._call("patch_job", self.custom.patch_namespaced_custom_object,
                       GROUP, VERSION, namespace, PLURAL, name, patch)
        except ApiException as e:
            if e.status != 404:
                raise

    def patch_sweep_status(self, namespace: str, name: str, status: Manifest) -> None:
        self._call("patch_sweep_status", self.custom.patch_namespaced_custom_object_status,
                   GROUP, VERSION, namespace, SWEEP_PLURAL, name, {"status": status})

    def record_event(self, job: Manifest, type_: str, reason: str, message: str) -> None:
        """An Event on the FineTuneJob or FineTuneSweep (core/v1, as `kubectl describe` shows them)."""
        meta = job["metadata"]
        now = utc_now()
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=job.get("kind") or KIND, name=meta["name"],
                namespace=meta["namespace"], uid=meta["uid"],
                resource_version=meta.get("resourceVersion"),
            ),
            type=type_, reason=reason, message=message[:1024],
            first_timestamp=now, last_timestamp=now, count=1,
            source=client.V1EventSource(component="kubetune-operator"),
            reporting_component="kubetune.io/operator", reporting_instance="kubetune-operator",
        )
        # An Event is best effort: never fail a reconcile over one.
        with contextlib.suppress(ApiException):
            self._call("create_event", self.core.create_namespaced_event, meta["namespace"], event)
