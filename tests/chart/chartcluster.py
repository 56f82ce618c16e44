"""Helpers for running the installed chart against the local cluster.

The operator runs here as a local process, but with exactly what the chart
gives its pod: the environment of the installed Deployment and a token of the
chart's ServiceAccount (never the admin certificate). Jobs are applied the way
a GitOps tool applies them: server-side apply under one field manager.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from localcluster import REPO

Manifest = dict[str, Any]
GITOPS_MANAGER = "gitops"  # the field manager our stand-in for Argo CD or Flux applies jobs with
# kwok's fake nodes: pods placed there are marked Running and run nothing. They may carry a
# taint that keeps every other pod off them (to the local cluster's real node agent).
KWOK_NODE_SELECTOR = {"type": "kwok"}
KWOK_TOLERATIONS = [{"key": "kubetune.io/fake-node", "operator": "Exists", "effect": "NoSchedule"}]


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition", interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def ftj(name: str, nodes: int = 2, gpus: int = 1, run_policy: Manifest | None = None) -> Manifest:
    """A valid FineTuneJob whose workers land on kwok's fake GPU nodes only."""
    spec: Manifest = {
        "model": {"uri": "s3://models/smollm2-135m-instruct/"},
        "dataset": {"train": "s3://datasets/chat/train.jsonl", "format": "chat"},
        "training": {"maxSteps": 100, "microBatchSize": 1},
        "resources": {"nodes": nodes, "gpusPerNode": gpus, "nodeSelector": KWOK_NODE_SELECTOR,
                      "tolerations": KWOK_TOLERATIONS},
        "image": "registry.example.com/kubetune/trainer:test",
        "output": {"uri": f"s3://models/{name}/"},
        "storage": {"endpoint": "http://minio.example:9000", "credentialsSecret": "s3-credentials"},
    }
    if run_policy:
        spec["runPolicy"] = run_policy
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "labels": {"team": "ml"}, "annotations": {"example.com/owner": "gitops"}},
            "spec": spec}


class GitOpsJobs:
    """FineTuneJobs in one namespace, applied as a GitOps tool does, and their pods."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster, self.ns = cluster, namespace
        self.manifests: dict[str, Manifest] = {}

    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply; returns the object as the API server stored it."""
        self.manifests[manifest["metadata"]["name"]] = copy.deepcopy(manifest)
        out = self.cluster.kubectl("apply", "--server-side", f"--field-manager={GITOPS_MANAGER}", "-n", self.ns,
                                   "-o", "json", "-f", "-", input=json.dumps(manifest))
        return dict(json.loads(out.stdout))

    def drift(self, name: str) -> str:
        """What `kubectl diff --server-side` of the last applied manifest shows (empty: no drift)."""
        out = self.cluster.kubectl("diff", "--server-side", f"--field-manager={GITOPS_MANAGER}", "-n", self.ns,
                                   "-f", "-", input=json.dumps(self.manifests[name]), check=False)
        assert out.returncode in (0, 1), out.stderr
        return str(out.stdout)

    def get(self, name: str, managed_fields: bool = False) -> Manifest:
        extra = ["--show-managed-fields"] if managed_fields else []
        return dict(json.loads(self.cluster.kubectl("get", "ftj", name, "-n", self.ns, "-o", "json", *extra).stdout))

    def exists(self, name: str) -> bool:
        return self.cluster.kubectl("get", "ftj", name, "-n", self.ns, check=False).returncode == 0

    def status(self, name: str) -> Manifest:
        return dict(self.get(name).get("status") or {})

    def pods(self, name: str) -> list[Manifest]:
        out = self.cluster.kubectl("get", "pods", "-n", self.ns, "-l", f"kubetune.io/job-name={name}", "-o", "json")
        pods = [p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]
        return sorted(pods, key=lambda p: p["metadata"]["name"])

    def running(self, name: str, attempt: int = 1, timeout: float = 60) -> Manifest:
        def check() -> Manifest | None:
            status, pods = self.status(name), self.pods(name)
            ok = (status.get("phase") == "Running" and (status.get("workers") or {}).get("ready") == len(pods) > 0
                  and all(p["metadata"]["labels"]["kubetune.io/attempt"] == str(attempt) for p in pods))
            return status if ok else None

        return dict(wait_for(check, timeout=timeout, what=f"{name} Running (attempt {attempt})"))

    def phase(self, name: str, phase: str, timeout: float = 60) -> Manifest:
        return dict(wait_for(lambda: (s := self.status(name)).get("phase") == phase and s,
                             timeout=timeout, what=f"{name} {phase}"))

    def terminate_worker(self, pod: str, exit_code: int, message: str = "") -> None:
        """Mark a worker's trainer terminated, through the status subresource, as a kubelet does."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "message": message, "startedAt": now, "finishedAt": now}
        status = {"status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}],
            "containerStatuses": [{"name": "trainer", "ready": False, "restartCount": 0,
                                   "image": "registry.example.com/kubetune/trainer:test", "imageID": "",
                                   "state": {"terminated": terminated}}],
        }}
        self.cluster.kubectl("patch", "pod", pod, "-n", self.ns, "--subresource=status", "--type=merge",
                             "-p", json.dumps(status))

    def event_reasons(self, name: str) -> set[str]:
        out = self.cluster.kubectl("get", "events", "-n", self.ns, "--field-selector",
                                   f"involvedObject.kind=FineTuneJob,involvedObject.name={name}", "-o", "json")
        return {e["reason"] for e in json.loads(out.stdout)["items"]}


class Recorder:
    """Every version of the FineTuneJobs in a namespace, from a `kubectl get -w` watch."""

    def __init__(self, cluster: Any, namespace: str, out: Path) -> None:
        self.out = out
        with open(out, "wb") as sink:
            self.proc = subprocess.Popen(
                [str(cluster.local.bins.kube("kubectl")), "get", "ftj", "-n", namespace, "--watch", "-o", "json"],
                stdout=sink, stderr=subprocess.DEVNULL, env=cluster.env)

    def stop(self) -> list[Manifest]:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        text, objects, decoder, i = self.out.read_text(), [], json.JSONDecoder(), 0
        while i < len(text):
            if text[i].isspace():
                i += 1
                continue
            obj, i = decoder.raw_decode(text, i)
            objects.append(obj)
        return objects


class OperatorProcess:
    """`python -m kubetune_operator`, configured as the chart configures its pod."""

    def __init__(self, env: dict[str, str], kubeconfig: Path, log: Path) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBETUNE_", "KUBERNETES_"))}
        self.env = {**base, **env, "KUBECONFIG": str(kubeconfig), "POD_ID": "kubetune-chart-test",
                    "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("api", "operator"))}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        health = self.env["KUBETUNE_HEALTH_PORT"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "kubetune_operator"], env=self.env, cwd=REPO,
                                         stdout=out, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(healthy, timeout=60, what="the operator's liveness endpoint")
        return self

    def stop(self) -> str:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        return self.log.read_text()


def rbac_denials(log: str) -> set[tuple[str, str, str]]:
    """(verb, resource, where) of the requests the API server refused for want of RBAC
    permission, as kopf logs them."""
    found = re.findall(r'User "system:serviceaccount:[^"]+" cannot (\w+) resource "([^"]+)" in API group "[^"]*"'
                       r'(?: in the namespace "([^"]+)"| at the cluster scope)', log)
    return {(verb, resource, namespace or "cluster") for verb, resource, namespace in found}


def token_kubeconfig(cluster: Any, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig that authenticates with a fresh token of the ServiceAccount (no client certificate)."""
    token = cluster.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": cluster.local.api_url,
                                                   "certificate-authority": str(cluster.local.pki / "ca.crt")}}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": service_account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def can_i_list(cluster: Any, kubeconfig: Path, namespace: str) -> set[tuple[str, str, str, str]]:
    """`kubectl auth can-i --list -n <namespace>` as the kubeconfig's user:
    (resource, non-resource URL, resource name, verb) rows."""
    out = subprocess.run([str(cluster.local.bins.kube("kubectl")), "--kubeconfig", str(kubeconfig),
                          "auth", "can-i", "--list", "-n", namespace],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    rows = set()
    for line in out.splitlines()[1:]:
        match = re.match(r"^(\S*)\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s*$", line)
        assert match, f"unexpected line in kubectl auth can-i --list: {line!r}"
        resource, urls, names, verbs = match.groups()
        for url in urls.split() or [""]:
            for name in names.split() or [""]:
                for verb in verbs.split():
                    rows.add((resource, url, name, verb))
    return rows


def as_can_i_rows(perms: set[tuple[str, str, str, str]]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, name, verb) permissions as `kubectl auth can-i --list` shows them."""
    rows = set()
    for group, resource, name, verb in perms:
        base, _, sub = resource.partition("/")
        shown = f"{base}.{group}" if group else base
        rows.add((shown + (f"/{sub}" if sub else ""), "", name, verb))
    return rows
