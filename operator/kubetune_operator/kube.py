"""The operator's only door to the Kubernetes API.

Only reconcile.py uses it; everything below reconcile is pure. It reads jobs
and pods, creates children if absent, deletes pods (guarded by their uid, so a
newer pod of the same name is never hit), patches status and records Events. Calls are
rate limited on the client side (QPS with a burst) per client, as client-go limits
each clientset: one bucket for the built-in kinds (pods, Services, the workers'
identity), one for kubetune's and Kueue's kinds (FineTuneJobs, their status,
Workloads), and one for Events, which go out in the background (EventSink). The
Kubeflow training operator has the same three: its Kubernetes clientset,
controller-runtime's client and its event recorder's. Every API error is counted
by operation for the metrics.
"""

from __future__ import annotations

import json
import queue
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
from kubetune_api.timestamps import format_timestamp

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


# The query parameters of LIST and WATCH calls, by the kubernetes client's keyword names.
QUERY_NAMES = {"label_selector": "labelSelector", "limit": "limit", "_continue": "continue", "watch": "watch",
               "resource_version": "resourceVersion", "allow_watch_bookmarks": "allowWatchBookmarks",
               "timeout_seconds": "timeoutSeconds"}
# Where a kind is created; the only kinds the operator creates through `Rest` (FineTuneJobs go through the
# custom objects API).
COLLECTIONS = {"Pod": "/api/v1/namespaces/{ns}/pods", "Service": "/api/v1/namespaces/{ns}/services",
               "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
               "Event": "/api/v1/namespaces/{ns}/events",
               "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
               "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"}


class Rest:
    """Plain JSON calls by path, for the built-in kinds. The kubernetes client's CoreV1Api would do, but its
    module alone holds some 80 MiB of memory once imported: more than the rest of the operator."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api = api_client

    def __call__(self, method: str, path: str, body: Any = None, _request_timeout: Any = None,
                 _preload_content: bool = False, **query: Any) -> Any:
        """The urllib3 response of a call (a stream, for a WATCH); ApiException for a status outside 2xx."""
        params = [(QUERY_NAMES[k], str(v).lower() if isinstance(v, bool) else v)
                  for k, v in query.items() if v is not None]
        request = self.api.param_serialize(
            method=method, resource_path=path, query_params=params, body=body, auth_settings=["BearerToken"],
            header_params={"Accept": "application/json", "Content-Type": "application/json"})
        response = self.api.call_api(*request, _request_timeout=_request_timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response

    def lister(self, path: str) -> Callable[..., Any]:
        """A LIST (or, with watch=True, WATCH) of one collection, taking the kubernetes client's keywords."""
        return partial(self, "GET", path)


class Kube:
    def __init__(self, api_client: client.ApiClient, qps: float = 50.0, burst: int = 100) -> None:
        self.rest = Rest(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.limiter = RateLimiter(qps, burst)  # built-in kinds, through `Rest`
        self.custom_limiter = RateLimiter(qps, burst)  # custom resources, through the custom objects API
        self.events = EventSink(self.rest, RateLimiter(qps, burst))
        self.requests = 0  # API calls made, for the benchmark and metrics

    def _limiter(self, fn: Callable[..., Any]) -> RateLimiter:
        target = fn.func if isinstance(fn, partial) else fn
        return self.limiter if target is self.rest else self.custom_limiter

    def _call(self, operation: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._limiter(fn).acquire()
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
            return {None: counted(self.rest.lister("/api/v1/pods"))}
        return {ns: counted(self.rest.lister(f"/api/v1/namespaces/{ns}/pods")) for ns in namespaces}

    def _list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        # Raw JSON: the pods are handled as plain manifests, like everything else in the operator.
        pods: Any = self._call("list_pods", self.rest, "GET", f"/api/v1/namespaces/{namespace}/pods",
                               label_selector=selector)
        return list(_manifest(pods)["items"])

    def list_workers(self, namespace: str, job: str) -> list[Manifest]:
        return self._list_pods(namespace, f"{JOB_NAME_LABEL}={job}")

    # ---------------------------------------------------------------- writes
    def create_if_absent(self, manifest: Manifest) -> Manifest | None:
        """Create the object and return it as the API server stored it; None (and no error) when one of that
        name exists."""
        kind, ns = manifest["kind"], manifest["metadata"]["namespace"]
        try:
            created: Any = self._call(f"create_{kind.lower()}", self.rest, "POST", COLLECTIONS[kind].format(ns=ns),
                                      body=manifest)
            return _manifest(created)
        except ApiException as e:
            if e.status == 409:
                return None
            raise

    def delete_pod(self, namespace: str, name: str, uid: str, grace_seconds: int | None = None) -> Manifest | None:
        """Delete a pod (its own grace period unless `grace_seconds`); the pod as the deletion left it
        (terminating), or None when it is gone already."""
        body: Manifest = {"preconditions": {"uid": uid}}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            deleted: Any = self._call("delete_pod", self.rest, "DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}",
                                      body=body)
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
        return self._list_pods(namespace, f"{SWEEP_LABEL}={sweep}")

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
        """An Event on the FineTuneJob or FineTuneSweep (core/v1, as `kubectl describe` shows them), sent in
        the background (EventSink)."""
        meta = job["metadata"]
        now = format_timestamp(utc_now())
        involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": job.get("kind") or KIND, "name": meta["name"],
                    "namespace": meta["namespace"], "uid": meta["uid"]}
        if meta.get("resourceVersion"):
            involved["resourceVersion"] = meta["resourceVersion"]
        self.events.send({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": involved,
            "type": type_, "reason": reason, "message": message[:1024],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": "kubetune-operator"},
            "reportingComponent": "kubetune.io/operator", "reportingInstance": "kubetune-operator",
        })


class EventSink:
    """Events go out from a thread of their own, in order, through a token bucket of their own, as client-go's
    event recorder sends them: a reconcile never waits for one, nor spends its API budget on one. They are
    best effort: a failed one is not retried, and while MAX_PENDING wait, new ones are dropped (counted in
    kubetune_api_errors_total{operation="create_event",status="dropped"})."""

    MAX_PENDING = 10_000

    def __init__(self, rest: Rest, limiter: RateLimiter) -> None:
        self.rest, self.limiter = rest, limiter
        self.pending: queue.Queue[Manifest] = queue.Queue(self.MAX_PENDING)
        self.thread = threading.Thread(target=self._run, name="kubetune-events", daemon=True)
        self.thread.start()

    def send(self, event: Manifest) -> None:
        try:
            self.pending.put_nowait(event)
        except queue.Full:
            metrics.API_ERRORS.labels("create_event", "dropped").inc()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every Event sent so far went out (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.pending.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.pending.unfinished_tasks

    def _run(self) -> None:
        while True:
            event = self.pending.get()
            try:
                self.limiter.acquire()
                metrics.API_REQUESTS.labels("create_event").inc()
                self.rest("POST", COLLECTIONS["Event"].format(ns=event["metadata"]["namespace"]), body=event)
            except ApiException as e:
                metrics.API_ERRORS.labels("create_event", str(e.status)).inc()
            except Exception:  # the connection, the API server restarting: the Event is lost, the sink goes on
                metrics.API_ERRORS.labels("create_event", "0").inc()
            finally:
                self.pending.task_done()
