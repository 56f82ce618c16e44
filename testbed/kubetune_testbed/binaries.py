"""The local cluster's binaries: their pinned versions and where the build put them.

hack/build-binaries.sh builds etcd, Kubernetes, kwok, helm, MinIO and Kueue from their
Go modules, at the versions pinned in hack/versions.env, into
~/.cache/kubetune/<component>-<version>/ (KUBETUNE_CACHE moves it). This module
reads the same pins and names the same paths, so the cluster, the chart's lint
and the tests use exactly what was built.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .repository import BUILD_BINARIES, VERSIONS_FILE


def versions() -> dict[str, str]:
    """The pinned versions from hack/versions.env."""
    out = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune"))


@dataclass(frozen=True)
class Binaries:
    """Where the built binaries live (hack/build-binaries.sh puts them there)."""

    root: Path
    v: dict[str, str]

    @classmethod
    def pinned(cls) -> Binaries:
        """The binaries of the pinned versions in the cache."""
        return cls(cache_dir(), versions())

    def _bin(self, component: str, key: str, name: str) -> Path:
        return self.root / f"{component}-{self.v[key]}" / "bin" / name

    @property
    def etcd(self) -> Path:
        return self._bin("etcd", "ETCD_VERSION", "etcd")

    def kube(self, name: str) -> Path:
        return self._bin("kubernetes", "KUBERNETES_VERSION", name)

    @property
    def kwok(self) -> Path:
        return self._bin("kwok", "KWOK_VERSION", "kwok")

    @property
    def kwok_stages(self) -> Path:
        return self.root / f"kwok-{self.v['KWOK_VERSION']}" / "stage"

    @property
    def helm(self) -> Path:
        return self._bin("helm", "HELM_VERSION", "helm")

    @property
    def minio(self) -> Path:
        return self._bin("minio", "MINIO_VERSION", "minio")

    @property
    def kueue(self) -> Path:
        return self._bin("kueue", "KUEUE_VERSION", "kueue")

    @property
    def kueue_crds(self) -> Path:
        """Kueue's CRDs, copied from its module (config/components/crd/bases) beside the binary."""
        return self.root / f"kueue-{self.v['KUEUE_VERSION']}" / "crd"

    @property
    def kueue_webhooks(self) -> Path:
        """Kueue's webhook configurations, copied from its module (config/components/webhook)."""
        return self.root / f"kueue-{self.v['KUEUE_VERSION']}" / "webhook-manifests.yaml"

    def all(self) -> list[Path]:
        kube = [self.kube(n) for n in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")]
        return [self.etcd, *kube, self.kwok, self.helm, self.minio, self.kueue, self.kueue_crds, self.kueue_webhooks]


def ensure_binaries(b: Binaries) -> None:
    """Build whatever is missing (a no-op when everything is cached)."""
    if all(p.exists() for p in b.all()):
        return
    subprocess.run([str(BUILD_BINARIES)], check=True)
