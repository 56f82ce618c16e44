"""The node agent: one Node of the local cluster whose pods really run, as local processes.

It does a kubelet's node-level work: registers the Node (the machine's CPUs and
memory, and a configurable `nvidia.com/gpu` count so GPU pods schedule here),
keeps it Ready with a Lease in kube-node-lease renewed every 10 s, watches the
pods bound to it and hands each to a PodRunner, serves their logs to the API
server, and keeps every pod's /etc/hosts in step with the addresses of the
pods of its subdomain. It builds the collaborators every pod's runner shares
(NodeServices: the node's identity, the address pool, the hosts files, the API
calls a pod needs) and hands each runner those, never itself.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import threading
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from kubetune_api import Manifest

from . import network
from .addresses import AddressPool
from .container import now_rfc3339
from .hosts import HostsFiles
from .logserver import LogServer
from .network import PodNetwork
from .node import NodeIdentity
from .podapi import SMP, PodApi, response_json
from .runner import NodeServices, PodRunner

log = logging.getLogger("nodeagent")

NODE_LABEL = "kubetune.io/node-agent"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10


def _micro_now() -> str:
    # A Lease's renewTime is a MicroTime: RFC 3339 with microseconds, unlike every status time.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


def _memory_kib() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


class Agent:
    """One node of the local cluster: its Node object and Lease, its pods' runners, its log endpoint."""

    def __init__(self, kubeconfig: Path, run_dir: Path, net: PodNetwork, node_name: str, gpus: int,
                 kubelet_version: str, serving_cert: str) -> None:
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        server = urllib.parse.urlsplit(self.api.configuration.host)
        self.api_host, self.api_port = server.hostname or "", server.port or 443
        self.net = net
        self.node_name = node_name
        self.gpus = gpus
        self.kubelet_version = kubelet_version
        self.dir = run_dir / "node-agent"
        self.pods_dir = self.dir / "pods"
        self.pki = run_dir / "pki"
        self.serving_cert = serving_cert
        self.lock = threading.Lock()
        self.runners: dict[str, PodRunner] = {}
        self.services = NodeServices(
            node=NodeIdentity(node_name, net, self.pods_dir, self.api_host, self.api_port),
            addresses=AddressPool(net), hosts=HostsFiles(), api=PodApi(self.core, node_name), finished=self.forget)
        self.stopping = threading.Event()
        self.started = now_rfc3339()
        self.node_uid = ""
        self.log_server: LogServer | None = None

    # ------------------------------------------------------------ main loop
    def run(self) -> None:
        for name in network.sandboxes(self.net):  # left by an agent that was killed
            network.remove_sandbox(name)
        if self.pods_dir.exists():
            shutil.rmtree(self.pods_dir)
        self.pods_dir.mkdir(parents=True)
        self.log_server = LogServer(self.net.host_ip, self.pki, self.serving_cert, self.container_log)
        self.log_server.start()
        self.register_node()
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._watch_pods, name="pod-watch", daemon=True).start()
        log.info("node %s ready: pods on %s, kubelet endpoint %s:%d", self.node_name, self.net.subnet,
                 self.net.host_ip, self.log_server.port)
        while not self.stopping.wait(1):
            pass
        self.shutdown()

    def shutdown(self) -> None:
        """Stop every pod's processes and remove their sandboxes; the pod objects stay, as with a kubelet."""
        with self.lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.shutdown()
        for runner in runners:
            runner.join(timeout=15)
        for name in network.sandboxes(self.net):
            network.remove_sandbox(name)
        log.info("node agent stopped")

    # ------------------------------------------------------------ the Node and its heartbeat
    def node_status(self) -> Manifest:
        disk = shutil.disk_usage(self.dir if self.dir.exists() else "/")
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{_memory_kib()}Ki", "pods": "110",
                    "ephemeral-storage": f"{disk.total // 1024}Ki", "nvidia.com/gpu": str(self.gpus)}
        now = now_rfc3339()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "node agent has sufficient memory available"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "node agent has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "node agent has sufficient PID available"),
            ("Ready", "True", "KubeletReady", "node agent is posting ready status"),
        ]
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        return {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": now,
                            "lastTransitionTime": self.started} for t, s, r, m in conditions],
            "addresses": [{"type": "InternalIP", "address": self.net.host_ip},
                          {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_server.port if self.log_server else 0}},
            "nodeInfo": {
                "machineID": _read("/etc/machine-id"), "systemUUID": "", "bootID": _read("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": platform.release(), "osImage": _os_image(),
                "containerRuntimeVersion": "kubetune-node-agent://local-processes",
                "kubeletVersion": self.kubelet_version, "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": arch,
            },
        }

    def register_node(self) -> None:
        labels = {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": self.node_status()["nodeInfo"]["architecture"], NODE_LABEL: "true"}
        if self.gpus:
            labels["nvidia.com/gpu.present"] = "true"
        node: Any = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": labels},
                "spec": {"podCIDR": str(self.net.subnet), "podCIDRs": [str(self.net.subnet)]},
                "status": self.node_status()}
        try:
            created = self.core.create_node(node, _preload_content=False)
            self.node_uid = response_json(created)["metadata"]["uid"]
        except ApiException as e:
            if e.status != 409:
                raise
            self.core.patch_node(self.node_name, {"metadata": {"labels": labels}}, _content_type=SMP)
            self._post_node_status()
            self.node_uid = response_json(self.core.read_node(self.node_name, _preload_content=False))["metadata"]["uid"]

    def _post_node_status(self) -> None:
        self.core.patch_node_status(self.node_name, {"status": self.node_status()}, _content_type=SMP,
                                    _preload_content=False)

    def _renew_lease(self) -> None:
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": _micro_now()}
        try:
            self.coordination.patch_namespaced_lease(self.node_name, LEASE_NAMESPACE, {"spec": spec},
                                                     _content_type=SMP, _preload_content=False)
        except ApiException as e:
            if e.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self.node_uid}
            lease: Any = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": self.node_name, "namespace": LEASE_NAMESPACE, "ownerReferences": [owner]},
                     "spec": spec}
            self.coordination.create_namespaced_lease(LEASE_NAMESPACE, lease, _preload_content=False)

    def _heartbeat(self) -> None:
        while not self.stopping.is_set():
            try:
                self._renew_lease()
                self._post_node_status()
            except Exception as e:
                log.warning("heartbeat failed: %s", e)
            self.stopping.wait(HEARTBEAT_SECONDS)

    # ------------------------------------------------------------ pods
    def _watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        while not self.stopping.is_set():
            try:
                listing = response_json(self.core.list_pod_for_all_namespaces(
                    field_selector=selector, _preload_content=False))
                present = {p["metadata"]["uid"] for p in listing["items"]}
                for pod in listing["items"]:
                    self.on_pod(pod)
                with self.lock:
                    vanished = [r for uid, r in self.runners.items() if uid not in present]
                for runner in vanished:
                    runner.removed()
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces, field_selector=selector,
                    resource_version=listing["metadata"]["resourceVersion"], allow_watch_bookmarks=True,
                    timeout_seconds=300)
                for event in stream:
                    kind, pod = event["type"], event["raw_object"]
                    if kind == "ERROR":
                        break  # typically 410 Gone: list again
                    if kind == "DELETED":
                        self.on_deleted(pod)
                    elif kind in ("ADDED", "MODIFIED"):
                        self.on_pod(pod)
            except Exception as e:
                log.warning("pod watch failed (%s); listing again", e)
                self.stopping.wait(1)

    def on_pod(self, pod: Manifest) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            runner = self.runners.get(uid)
            if runner is None:
                if self.stopping.is_set():
                    return
                runner = self.runners[uid] = PodRunner(self.services, pod)
                runner.start()
                return
        runner.update(pod)

    def on_deleted(self, pod: Manifest) -> None:
        with self.lock:
            runner = self.runners.get(pod["metadata"]["uid"])
        if runner is not None:
            runner.removed()

    def forget(self, runner: PodRunner) -> None:
        with self.lock:
            self.runners.pop(runner.uid, None)
        shutil.rmtree(runner.dir, ignore_errors=True)

    def container_log(self, namespace: str, pod: str, container: str, previous: bool) -> tuple[Path, bool] | None:
        with self.lock:
            runner = next((r for r in self.runners.values() if (r.namespace, r.pod_name) == (namespace, pod)), None)
        return runner.container_log(container, previous) if runner else None
