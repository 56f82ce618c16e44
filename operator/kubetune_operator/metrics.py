"""Prometheus metrics of the operator, served on KUBETUNE_METRICS_PORT.

Names follow Prometheus conventions (`kubetune_` prefix, `_total` counters,
`_seconds` histograms) so dashboards and alerts can be written once.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

from kubetune_api.constants import Phase

JOBS = Gauge("kubetune_jobs", "FineTuneJobs known to this operator, by phase.", ["phase"])
RECONCILE_SECONDS = Histogram(
    "kubetune_reconcile_duration_seconds", "Time one reconcile of a FineTuneJob takes.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RESTARTS = Counter("kubetune_gang_restarts_total", "Gang restarts of FineTuneJobs, by cause.", ["cause"])
API_REQUESTS = Counter("kubetune_api_requests_total", "Kubernetes API calls made, by operation.", ["operation"])
LEADER = Gauge("kubetune_leader", "1 while this replica acts (it holds the Lease, or runs standalone); 0 while it stands by.")
API_ERRORS = Counter(
    "kubetune_api_errors_total", "Kubernetes API calls that failed, by operation and HTTP status.",
    ["operation", "status"],
)

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def observe_phase(namespace: str, name: str, phase: str | None) -> None:
    """Remember a job's phase (None: the job is gone) and refresh the per-phase gauge."""
    with _lock:
        if phase is None:
            _phases.pop((namespace, name), None)
        else:
            _phases[(namespace, name)] = phase
        _refresh()


def keep_only(jobs: set[tuple[str, str]]) -> None:
    """Forget jobs that no longer exist (their deletion wakes no reconcile)."""
    with _lock:
        for key in set(_phases) - jobs:
            del _phases[key]
        _refresh()


def _refresh() -> None:
    counts: dict[str, int] = {}
    for p in _phases.values():
        counts[p] = counts.get(p, 0) + 1
    for p in Phase:
        JOBS.labels(p).set(counts.get(p, 0))
