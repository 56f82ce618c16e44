"""The suite's API access: the admin's client, and patience while the API server restarts.

Every call is retried for up to `patience` seconds on errors a restart causes
(connection refused or reset, 5xx, 429), so that a fault the suite injects
itself never fails the suite.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubetune_api.constants import GROUP, PLURAL, VERSION

from ..cluster import LocalCluster


class Kube:
    def __init__(self, cluster: LocalCluster, patience: float = 180.0) -> None:
        self.api = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.patience = patience

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.patience
        while True:
            try:
                return fn(*args, _request_timeout=30, **kwargs)
            except ApiException as e:
                if e.status not in (0, 429, 500, 502, 503, 504) or time.monotonic() > deadline:
                    raise
            except (HTTPError, OSError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(1)

    def json(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A call's response as plain JSON (no model classes: cheap, and as kubectl shows it)."""
        resp = self.call(fn, *args, _preload_content=False, **kwargs)
        return json.loads(resp.data)

    # ------------------------------------------------------------ what the suite reads
    def jobs(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.json(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)["items"])

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        return list(self.json(self.core.list_namespaced_pod, namespace, label_selector=selector)["items"])

    def log(self, namespace: str, pod: str, tail: int | None = None, previous: bool = False) -> str:
        """The pod's log ("" when it has none, or is gone)."""
        try:
            resp = self.call(self.core.read_namespaced_pod_log, pod, namespace, tail_lines=tail,
                             previous=previous, _preload_content=False)
        except ApiException:
            return ""
        return str(resp.data.decode(errors="replace"))

    def apply(self, obj: dict[str, Any]) -> None:
        """Create `obj` (a Namespace, Secret or FineTuneJob); an existing one is left as it is."""
        meta = obj["metadata"]
        try:
            if obj["kind"] == "Namespace":
                self.call(self.core.create_namespace, obj)
            elif obj["kind"] == "Secret":
                self.call(self.core.create_namespaced_secret, meta["namespace"], obj)
            else:
                self.call(self.custom.create_namespaced_custom_object, GROUP, VERSION, meta["namespace"], PLURAL, obj)
        except ApiException as e:
            if e.status != 409:
                raise
