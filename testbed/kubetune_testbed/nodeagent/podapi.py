"""What a pod needs from the API server, fetched and written with the node agent's own credentials.

A kubelet reads the ConfigMaps and Secrets its pods refer to, requests their
service-account tokens, reports their status through the status subresource,
records Events on them (back-off, failed probes, kills) and, once a deleted
pod's processes are gone, confirms the deletion. A pod's
runner does all of that through this and nothing else of the API.

Calls are made with _preload_content=False: the raw JSON, not the client's
models, is what gets compared and written back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune_api import Manifest, format_timestamp, utc_now

from . import podspec

log = logging.getLogger("nodeagent")

SMP = "application/strategic-merge-patch+json"


def response_json(response: object) -> Any:
    """The body of a call made with _preload_content=False (typed as the model, it is the raw response)."""
    return json.loads(cast(Any, response).data)


def json_or_none(read: Callable[[], object]) -> Any:
    """The body of a read made with _preload_content=False, or None when the object does not exist."""
    try:
        return response_json(read())
    except ApiException as e:
        if e.status == 404:
            return None
        raise


class PodApi:
    """The API calls a pod's runner makes, on the node agent's client."""

    def __init__(self, core: client.CoreV1Api, node_name: str) -> None:
        self.core = core
        self.node_name = node_name

    def configmap(self, namespace: str, name: str) -> dict[str, bytes] | None:
        cm = json_or_none(lambda: self.core.read_namespaced_config_map(name, namespace, _preload_content=False))
        return None if cm is None else podspec.configmap_data(cm)

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        secret = json_or_none(lambda: self.core.read_namespaced_secret(name, namespace, _preload_content=False))
        return None if secret is None else podspec.decode_secret(secret)

    def token(self, pod: Manifest, audience: str | None, seconds: int) -> str:
        """A service-account token for the pod's account, bound to the pod (the TokenRequest API)."""
        meta = pod["metadata"]
        spec: dict[str, Any] = {"expirationSeconds": seconds,
                                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}}
        if audience:
            spec["audiences"] = [audience]
        account = pod["spec"].get("serviceAccountName") or "default"
        body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        response = self.core.create_namespaced_service_account_token(account, meta["namespace"], body,
                                                                     _preload_content=False)
        return str(response_json(response)["status"]["token"])

    def patch_status(self, pod: Manifest, status: Manifest) -> None:
        meta = pod["metadata"]
        if status.get("podIPs"):
            # A strategic merge patch merges podIPs by ip: a pod that a restarted node agent runs again
            # (with a new address) would get two, which the API server rejects, and its status would
            # never change again. Its addresses are replaced instead, as a kubelet's are.
            status = {**status, "podIPs": [*status["podIPs"], {"$patch": "replace"}]}
        self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": status},
                                              _content_type=SMP, _preload_content=False)

    def event(self, pod: Manifest, type_: str, reason: str, message: str) -> None:
        """An Event on the pod from the kubelet (`kubectl describe pod` lists them); best effort."""
        meta = pod["metadata"]
        now = format_timestamp(utc_now())
        body: Any = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": type_, "reason": reason, "message": message[:1024],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet", "reportingInstance": self.node_name,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)
        except Exception as e:  # an Event is never worth failing a pod over
            log.debug("pod %s/%s: event %s not recorded: %s", meta["namespace"], meta["name"], reason, e)

    def confirm_deletion(self, pod: Manifest) -> None:
        """Delete the pod with grace 0 (its processes are gone), as a kubelet confirms a termination."""
        meta = pod["metadata"]
        body: Any = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        try:
            self.core.delete_namespaced_pod(meta["name"], meta["namespace"], body=body, _preload_content=False)
        except ApiException as e:
            if e.status not in (404, 409):
                raise
        log.info("pod %s/%s deleted", meta["namespace"], meta["name"])
