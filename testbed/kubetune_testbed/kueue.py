"""Kueue on the local cluster: its CRDs, its configuration and its webhooks, as a real manager process.

Kueue (sigs.k8s.io/kueue, built from its Go module by hack/build-binaries.sh)
admits jobs against quotas. kubetune's FineTuneJob is one of its "external
frameworks": the operator creates and owns each queued job's Workload, and
Kueue's scheduler admits or evicts it. Here Kueue runs as it does in a
cluster, with three differences a process on this machine needs:

- its webhooks are served with a certificate from the cluster's CA and
  registered with a URL (https://127.0.0.1:<port>/...) instead of a Service;
  only the webhooks of Kueue's own API group are registered (its other
  integrations, batch Jobs or plain Pods, are not enabled here);
- leader election and Kueue's own certificate management are off;
- the on-demand visibility API (an aggregated API server) is off;
- its metrics endpoint is off, yet Kueue without its own certificate management
  insists on loading a metrics certificate from the fixed path
  /etc/kueue/metrics/certs (where a cluster mounts a Secret): the test bed puts
  a certificate from its CA there when none is (this needs root, as the node
  agent does).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from .pki import KUEUE_WEBHOOK_SERVING

NAMESPACE = "kueue-system"
# What the operator registers with Kueue: Kind.version.group.
EXTERNAL_FRAMEWORK = "FineTuneJob.v1alpha1.kubetune.io"
GROUP = "kueue.x-k8s.io"
WEBHOOK_PREFIX = "kubetune-local-kueue"


def configuration(webhook_port: int, health_port: int, cert_dir: Path) -> str:
    """Kueue's Configuration file (config.kueue.x-k8s.io/v1beta2)."""
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "clientConnection": {"qps": 50, "burst": 100},
        "integrations": {"frameworks": ["batch/job"], "externalFrameworks": [EXTERNAL_FRAMEWORK]},
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_serving_cert(pki: Path, cert_dir: Path) -> None:
    """The webhook server's certificate, under the names controller-runtime looks for."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pki / f"{KUEUE_WEBHOOK_SERVING}.crt", cert_dir / "tls.crt")
    shutil.copyfile(pki / f"{KUEUE_WEBHOOK_SERVING}.key", cert_dir / "tls.key")


METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")


def ensure_metrics_cert(pki: Path, cert_dir: Path = METRICS_CERT_DIR) -> None:
    """A certificate and key at the path Kueue reads them from (see above), unless both are there."""
    if (cert_dir / "tls.crt").exists() and (cert_dir / "tls.key").exists():
        return
    cert_dir.mkdir(parents=True, exist_ok=True)
    for src, dst in ((f"{KUEUE_WEBHOOK_SERVING}.key", "tls.key"), (f"{KUEUE_WEBHOOK_SERVING}.crt", "tls.crt")):
        tmp = cert_dir / f".{dst}.{os.getpid()}"
        shutil.copyfile(pki / src, tmp)
        os.replace(tmp, cert_dir / dst)


def webhook_configurations(manifests: Path, port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Kueue's webhook configurations (its module's config/components/webhook/manifests.yaml), reduced
    to the webhooks of its own API group, each pointed at https://127.0.0.1:<port><its path>."""
    out = []
    for doc in yaml.safe_load_all(manifests.read_text()):
        if not doc:
            continue
        hooks = []
        for hook in doc.get("webhooks") or ():
            if not any(GROUP in (rule.get("apiGroups") or ()) for rule in hook.get("rules") or ()):
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}",
                                    "caBundle": base64.b64encode(ca_bundle).decode()}
            hooks.append(hook)
        kind_prefix = "mutating" if doc["kind"].startswith("Mutating") else "validating"
        doc["metadata"] = {"name": f"{WEBHOOK_PREFIX}-{kind_prefix}"}
        doc["webhooks"] = hooks
        out.append(doc)
    return out
