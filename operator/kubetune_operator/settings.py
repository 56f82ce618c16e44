"""The operator's configuration: typed, documented, read once from KUBETUNE_* variables.

The Helm chart sets these; `python -m kubetune_operator --help` prints this list.

  KUBETUNE_NAMESPACES      comma-separated namespaces to watch; empty (default): the whole cluster
  KUBETUNE_METRICS_PORT    Prometheus /metrics port; 0 turns it off (default 8080)
  KUBETUNE_HEALTH_PORT     liveness endpoint /healthz port; 0 turns it off (default 8081)
  KUBETUNE_PEERING         KopfPeering name that keeps one replica active; empty: standalone (default kubetune)
  KUBETUNE_PRIORITY        this replica's peering priority; the highest is active (default 0)
  KUBETUNE_WORKERS         reconciles that may run at once (default 8)
  KUBETUNE_API_QPS         sustained Kubernetes API calls per second (default 50)
  KUBETUNE_API_BURST       API calls allowed at once above the QPS (default 100)
  KUBETUNE_RESYNC_SECONDS  how often jobs due for another look (a deadline, a TTL, workers
                           still starting) are reconciled without an event; deadlines and
                           TTLs are met at this granularity (default 5)
  KUBETUNE_LOG_LEVEL       DEBUG, INFO, WARNING or ERROR (default INFO)
  KUBETUNE_TRAINER_IMAGE   trainer image for jobs that leave spec.image unset
                           (default ghcr.io/kubetune/trainer:0.1.0)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .workers import DEFAULT_TRAINER_IMAGE


def _env(name: str, default: str) -> str:
    return os.environ.get(f"KUBETUNE_{name}", default)


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...]
    """KUBETUNE_NAMESPACES: comma-separated namespaces to watch; empty (default): the whole cluster."""
    metrics_port: int
    """KUBETUNE_METRICS_PORT: port of the Prometheus /metrics endpoint; 0 turns it off. Default 8080."""
    health_port: int
    """KUBETUNE_HEALTH_PORT: port of the liveness endpoint /healthz; 0 turns it off. Default 8081."""
    peering: str
    """KUBETUNE_PEERING: name of the KopfPeering that keeps one replica active; empty: standalone. Default kubetune."""
    priority: int
    """KUBETUNE_PRIORITY: this replica's peering priority; the highest one is active. Default 0."""
    workers: int
    """KUBETUNE_WORKERS: reconciles that may run at once (thread pool size). Default 8."""
    api_qps: float
    """KUBETUNE_API_QPS: sustained Kubernetes API calls per second for reconciles. Default 50."""
    api_burst: int
    """KUBETUNE_API_BURST: API calls allowed at once above the QPS. Default 100."""
    resync_seconds: float
    """KUBETUNE_RESYNC_SECONDS: how often jobs due for another look are reconciled. Default 5."""
    log_level: str
    """KUBETUNE_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR. Default INFO."""
    trainer_image: str
    """KUBETUNE_TRAINER_IMAGE: the image of jobs that leave spec.image unset."""

    @classmethod
    def from_env(cls) -> Settings:
        level = _env("LOG_LEVEL", "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SystemExit(f"KUBETUNE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR (got {level!r})")
        try:
            return cls(
                namespaces=tuple(n.strip() for n in _env("NAMESPACES", "").split(",") if n.strip()),
                metrics_port=int(_env("METRICS_PORT", "8080")),
                health_port=int(_env("HEALTH_PORT", "8081")),
                peering=_env("PEERING", "kubetune"),
                priority=int(_env("PRIORITY", "0")),
                workers=int(_env("WORKERS", "8")),
                api_qps=float(_env("API_QPS", "50")),
                api_burst=int(_env("API_BURST", "100")),
                resync_seconds=float(_env("RESYNC_SECONDS", "5")),
                log_level=level,
                trainer_image=_env("TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE),
            )
        except ValueError as e:
            raise SystemExit(f"invalid KUBETUNE_* setting: {e}") from e
