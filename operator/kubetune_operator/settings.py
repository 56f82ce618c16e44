"""The operator's configuration: typed, documented, read once from KUBETUNE_* variables.

The Helm chart sets these; `python -m kubetune_operator --help` prints this list.

  KUBETUNE_NAMESPACES      comma-separated namespaces to watch; empty (default): the whole cluster
  KUBETUNE_METRICS_PORT    Prometheus /metrics port; 0 turns it off (default 8080)
  KUBETUNE_HEALTH_PORT     /healthz (liveness) and /readyz (readiness) port; 0 turns them off (default 8081)
  KUBETUNE_LEASE_NAME      the coordination.k8s.io/v1 Lease that elects the one replica that acts
                           (default kubetune-operator); --standalone runs without one
  KUBETUNE_LEASE_NAMESPACE the Lease's namespace; default: the pod's own namespace in a
                           cluster, else `default`
  KUBETUNE_LEASE_DURATION_SECONDS  how long a standby waits, after the Lease last changed,
                           before it takes the Lease over (default 15)
  KUBETUNE_RENEW_DEADLINE_SECONDS  how long the leader keeps acting without renewing the
                           Lease; past it, it exits (default 10)
  KUBETUNE_RETRY_PERIOD_SECONDS    how often the leader renews and a standby tries (default 2)
  KUBETUNE_WORKERS         reconciles that may run at once (default 8)
  KUBETUNE_API_QPS         sustained Kubernetes API calls per second, per client (default 50;
                           three clients, as client-go has one limit per clientset: built-in
                           kinds, kubetune's and Kueue's kinds, Events)
  KUBETUNE_API_BURST       API calls allowed at once above the QPS, per client (default 100)
  KUBETUNE_RESYNC_SECONDS  how often jobs due for another look (a deadline, a TTL, workers
                           still starting) are reconciled without an event; deadlines and
                           TTLs are met at this granularity (default 5)
  KUBETUNE_LOG_LEVEL       DEBUG, INFO, WARNING or ERROR (default INFO)
  KUBETUNE_TRAINER_IMAGE   trainer image for jobs that leave spec.image unset
                           (default ghcr.io/kubetune/trainer:0.1.0)
  KUBETUNE_KUEUE           true: jobs labelled kueue.x-k8s.io/queue-name wait for Kueue's
                           admission through a Workload (kueue.py); false (default): the
                           label is ignored
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .workers import DEFAULT_TRAINER_IMAGE

# Where a kubelet mounts the pod's ServiceAccount namespace: the Lease's default namespace in a cluster.
IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"KUBETUNE_{name}", default)


def _flag(name: str) -> bool:
    value = _env(name, "false").strip().lower()
    if value not in ("true", "false"):
        raise SystemExit(f"KUBETUNE_{name} must be true or false (got {value!r})")
    return value == "true"


def _default_lease_namespace() -> str:
    try:
        return IN_CLUSTER_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...]
    """KUBETUNE_NAMESPACES: comma-separated namespaces to watch; empty (default): the whole cluster."""
    metrics_port: int
    """KUBETUNE_METRICS_PORT: port of the Prometheus /metrics endpoint; 0 turns it off. Default 8080."""
    health_port: int
    """KUBETUNE_HEALTH_PORT: port of /healthz and /readyz; 0 turns them off. Default 8081."""
    lease_name: str
    """KUBETUNE_LEASE_NAME: the Lease that elects the acting replica. Default kubetune-operator."""
    lease_namespace: str
    """KUBETUNE_LEASE_NAMESPACE: the Lease's namespace. Default: the pod's namespace, else `default`."""
    lease_duration_seconds: int
    """KUBETUNE_LEASE_DURATION_SECONDS: a standby takes over a Lease unchanged for this long. Default 15."""
    renew_deadline_seconds: float
    """KUBETUNE_RENEW_DEADLINE_SECONDS: the leader exits when it could not renew for this long. Default 10."""
    retry_period_seconds: float
    """KUBETUNE_RETRY_PERIOD_SECONDS: how often the leader renews and a standby tries. Default 2."""
    workers: int
    """KUBETUNE_WORKERS: reconciles that may run at once (thread pool size). Default 8."""
    api_qps: float
    """KUBETUNE_API_QPS: sustained Kubernetes API calls per second, per client (built-in kinds, custom
    resources, Events: kube.py). Default 50."""
    api_burst: int
    """KUBETUNE_API_BURST: API calls allowed at once above the QPS, per client. Default 100."""
    resync_seconds: float
    """KUBETUNE_RESYNC_SECONDS: how often jobs due for another look are reconciled. Default 5."""
    log_level: str
    """KUBETUNE_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR. Default INFO."""
    trainer_image: str
    """KUBETUNE_TRAINER_IMAGE: the image of jobs that leave spec.image unset."""
    kueue: bool = False
    """KUBETUNE_KUEUE: true: the Kueue integration (kueue.py) is on. Default false."""

    @classmethod
    def from_env(cls) -> Settings:
        level = _env("LOG_LEVEL", "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SystemExit(f"KUBETUNE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR (got {level!r})")
        try:
            settings = cls(
                namespaces=tuple(n.strip() for n in _env("NAMESPACES", "").split(",") if n.strip()),
                metrics_port=int(_env("METRICS_PORT", "8080")),
                health_port=int(_env("HEALTH_PORT", "8081")),
                lease_name=_env("LEASE_NAME", "kubetune-operator"),
                lease_namespace=_env("LEASE_NAMESPACE", "") or _default_lease_namespace(),
                lease_duration_seconds=int(_env("LEASE_DURATION_SECONDS", "15")),
                renew_deadline_seconds=float(_env("RENEW_DEADLINE_SECONDS", "10")),
                retry_period_seconds=float(_env("RETRY_PERIOD_SECONDS", "2")),
                workers=int(_env("WORKERS", "8")),
                api_qps=float(_env("API_QPS", "50")),
                api_burst=int(_env("API_BURST", "100")),
                resync_seconds=float(_env("RESYNC_SECONDS", "5")),
                log_level=level,
                trainer_image=_env("TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE),
                kueue=_flag("KUEUE"),
            )
        except ValueError as e:
            raise SystemExit(f"invalid KUBETUNE_* setting: {e}") from e
        settings.check_leader_election()
        return settings

    def check_leader_election(self) -> None:
        """The timings must leave the leader time to stop before a standby may take over
        (client-go's rules: lease duration > renew deadline > retry period)."""
        if not self.lease_name:
            raise SystemExit("KUBETUNE_LEASE_NAME must not be empty (run with --standalone for no leader election)")
        if not 0 < self.retry_period_seconds < self.renew_deadline_seconds < self.lease_duration_seconds:
            raise SystemExit(
                "KUBETUNE_RETRY_PERIOD_SECONDS < KUBETUNE_RENEW_DEADLINE_SECONDS < KUBETUNE_LEASE_DURATION_SECONDS "
                f"must hold, all > 0 (got {self.retry_period_seconds:g} < {self.renew_deadline_seconds:g} < "
                f"{self.lease_duration_seconds:g}): a leader must give up before a standby may take over")
