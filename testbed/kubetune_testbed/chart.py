"""The operator installed as users install it: the Helm chart, into the local cluster.

`make demo` and the end-to-end tests run the operator this way: `helm upgrade
--install --wait` of charts/kubetune with its default values. The node agent
runs its pods from the operator image's entrypoint (operator/Dockerfile), with
the in-cluster credentials of the chart's ServiceAccount and the chart's
probes, so `--wait` returns once both replicas are Ready; one of them holds the
Lease and acts.

The chart takes over a FineTuneJob CRD that `kubectl apply` installed before
(`--take-ownership`): the tests install it that way, and a cluster may have
run them.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from .cluster import LocalCluster
from .repository import REPO

CHART = REPO / "charts" / "kubetune"


@dataclass(frozen=True)
class OperatorRelease:
    """One install of the chart: release `name` in `namespace` (its full name is the release name)."""

    cluster: LocalCluster
    name: str = "kubetune"
    namespace: str = "kubetune-system"

    def helm(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run([str(self.cluster.bins.helm), "--kubeconfig", str(self.cluster.admin_kubeconfig),
                                 "--namespace", self.namespace, *args],
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def install(self, *values: str) -> str:
        """`helm upgrade --install --wait` with the chart's defaults and `values` (`--set` arguments); the notes."""
        return self.helm("upgrade", "--install", self.name, str(CHART), "--create-namespace", "--take-ownership",
                         "--wait", "--timeout", "180s", *[a for v in values for a in ("--set", v)])

    def uninstall(self) -> None:
        self.helm("uninstall", self.name, "--wait")

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("-n", self.namespace, *args)

    def leader(self) -> str:
        """The name of the pod that holds the Lease; "" when none does."""
        out = self.kubectl("get", "lease", self.name, "-o", "jsonpath={.spec.holderIdentity}")
        return out.stdout.split("_", 1)[0] if out.returncode == 0 else ""

    def logs(self, pod: str) -> str:
        """`kubectl logs` of one of the operator's pods ("" once it is gone)."""
        out = self.kubectl("logs", pod)
        return out.stdout if out.returncode == 0 else ""


@contextlib.contextmanager
def installed_operators_paused(cluster: LocalCluster, keep_namespace: str = "") -> Iterator[None]:
    """Scale every installed kubetune operator (Deployments labelled part-of=kubetune, outside
    `keep_namespace`) to 0 replicas, wait until their pods are gone, and scale them back afterwards:
    an operator that `make demo` left running would act on the jobs of a test or of the chaos suite too."""
    out = cluster.kubectl("get", "deployments", "-A", "-l", "app.kubernetes.io/part-of=kubetune", "-o", "json")
    paused = [(d["metadata"]["namespace"], d["metadata"]["name"], d["spec"]["replicas"],
               ",".join(f"{k}={v}" for k, v in d["spec"]["selector"]["matchLabels"].items()))
              for d in json.loads(out.stdout)["items"]
              if d["spec"].get("replicas") and d["metadata"]["namespace"] != keep_namespace] if out.returncode == 0 else []
    for ns, name, replicas, _ in paused:
        print(f"pausing the installed operator {ns}/{name} ({replicas} replicas)")
        cluster.kubectl("scale", "deployment", name, "-n", ns, "--replicas=0")
    for ns, name, _, selector in paused:
        deadline = time.monotonic() + 60
        while json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json").stdout or '{"items": []}')["items"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the operator {ns}/{name} did not stop in 60 s")
            time.sleep(0.5)
    try:
        yield
    finally:
        for ns, name, replicas, _ in paused:
            cluster.kubectl("scale", "deployment", name, "-n", ns, f"--replicas={replicas}")
