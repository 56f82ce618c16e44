"""Helpers for running the installed chart against the local cluster.

The chart's operator runs as its pods on the node agent's node, as a user's
would. Where a test needs it as a local process instead (ChartOperator), it
gets exactly what the chart gives its pod: the environment of the installed
Deployment and a token of the chart's ServiceAccount (never the admin
certificate). Jobs are applied the way a GitOps tool applies them:
server-side apply under one field manager.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import harness
import yaml
from harness import Jobs, OperatorProcess, wait_for

from kubetune_api import Manifest

GITOPS_MANAGER = "gitops"  # the field manager our stand-in for Argo CD or Flux applies jobs with


def ftj(name: str, nodes: int = 2, gpus: int = 1, **spec: Any) -> Manifest:
    """harness.ftj as a Git repository would hold it: with a label and an annotation of its own,
    which the operator must leave alone."""
    return harness.ftj(name, nodes, gpus, metadata={"labels": {"team": "ml"},
                                                    "annotations": {"example.com/owner": "gitops"}}, **spec)


class GitOpsJobs(Jobs):
    """FineTuneJobs in one namespace, applied as a GitOps tool does, and their pods."""

    apply_args = ("--server-side", f"--field-manager={GITOPS_MANAGER}")

    def __init__(self, cluster: Any, namespace: str) -> None:
        super().__init__(cluster, namespace)
        self.manifests: dict[str, Manifest] = {}

    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply; returns the object as the API server stored it."""
        self.manifests[manifest["metadata"]["name"]] = copy.deepcopy(manifest)
        return super().apply(manifest)

    def drift(self, name: str) -> str:
        """What `kubectl diff --server-side` of the last applied manifest shows (empty: no drift)."""
        out = self.cluster.kubectl("diff", *self.apply_args, "-n", self.ns,
                                   "-f", "-", input=json.dumps(self.manifests[name]), check=False)
        assert out.returncode in (0, 1), out.stderr
        return str(out.stdout)

    def get(self, name: str, managed_fields: bool = False) -> Manifest:
        extra = ["--show-managed-fields"] if managed_fields else []
        return dict(json.loads(self.cluster.kubectl("get", "ftj", name, "-n", self.ns, "-o", "json", *extra).stdout))

    def exists(self, name: str) -> bool:
        return self.cluster.kubectl("get", "ftj", name, "-n", self.ns, check=False).returncode == 0

    def pods(self, name: str) -> list[Manifest]:
        """The job's pods, less those being deleted."""
        return [p for p in super().pods(name) if not p["metadata"].get("deletionTimestamp")]

    def running(self, name: str, attempt: int = 1, timeout: float = 60) -> Manifest:
        def check() -> Manifest | None:
            status, pods = self.status(name), self.pods(name)
            ok = (status.get("phase") == "Running" and (status.get("workers") or {}).get("attempt") == attempt
                  and (status.get("workers") or {}).get("ready") == len(pods) > 0
                  and all(p["metadata"]["labels"]["kubetune.io/attempt"] == str(attempt) for p in pods))
            return status if ok else None

        return dict(wait_for(check, timeout=timeout, what=f"{name} Running (attempt {attempt})"))

    def phase(self, name: str, phase: str, timeout: float = 60) -> Manifest:
        return dict(wait_for(lambda: (s := self.status(name)).get("phase") == phase and s,
                             timeout=timeout, what=f"{name} {phase}"))

    def event_reasons(self, name: str) -> set[str]:
        return {e["reason"] for e in self.events(name)}


class ChartOperator(OperatorProcess):
    """`python -m kubetune_operator` configured as the chart configures its pod: the
    Deployment's environment as it is (ports, resyncs, log level, leader election; no
    --standalone) and a kubeconfig of the chart's ServiceAccount."""

    def __init__(self, env: dict[str, str], kubeconfig: Path, log: Path) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBETUNE_", "KUBERNETES_"))}
        super().__init__({**base, **env, "KUBECONFIG": str(kubeconfig)}, log, args=(), settings={})

    def stop(self) -> str:
        """SIGTERM, as the kubelet stops a pod; returns the log."""
        self.kill(signal.SIGTERM)
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
