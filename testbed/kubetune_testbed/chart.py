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

import subprocess
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
