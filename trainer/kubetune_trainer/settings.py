"""Where the trainer runs: the environment the operator's pod gives it, read once and typed.

Everything here comes from environment variables (`KUBETUNE_*`, plus the
Kubernetes service variables), never from the spec: the spec says what to
train, the environment says where this process is. Every variable has a default
that works outside a cluster, so `python -m kubetune_trainer job.yaml` runs on a
laptop. A malformed value is bad input, reported with the variable's name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kubetune_api.constants import PVC_MOUNT_ROOT
from kubetune_trainer.errors import ConfigError

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TERMINATION_LOG = "/dev/termination-log"
MB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """The trainer's runtime settings (see each field for its variable)."""

    config_path: str | None = None
    """KUBETUNE_CONFIG: the job's config file (the operator mounts /etc/kubetune/config.json)."""
    job_name: str | None = None
    """KUBETUNE_JOB_NAME: the FineTuneJob whose status rank 0 patches; unset: standalone."""
    namespace: str | None = None
    """KUBETUNE_NAMESPACE: the job's namespace."""
    attempt: int = 1
    """KUBETUNE_ATTEMPT: the gang attempt this pod belongs to (1, plus one per gang restart), as
    the operator counts it in status.workers.attempt."""
    scratch_dir: Path = Path(tempfile.gettempdir()) / "kubetune"
    """KUBETUNE_SCRATCH_DIR: node-local disk for the staged model and checkpoint shards."""
    pvc_root: str = PVC_MOUNT_ROOT
    """KUBETUNE_PVC_ROOT: where pvc://claim/path URIs are mounted (tests point it at a temp dir)."""
    service_account_dir: Path = Path(SERVICE_ACCOUNT_DIR)
    """KUBETUNE_SERVICE_ACCOUNT_DIR: the pod's service account token and ca.crt."""
    status_interval_seconds: float = 10.0
    """KUBETUNE_STATUS_INTERVAL_SECONDS: least time between two progress patches."""
    upload_concurrency: int = 8
    """KUBETUNE_UPLOAD_CONCURRENCY: parallel S3 requests of one rank's uploader (files and parts)."""
    upload_chunk_bytes: int = 64 * MB
    """KUBETUNE_UPLOAD_CHUNK_MB: multipart part size; files above it are uploaded in parts."""
    upload_max_bandwidth: int | None = None
    """KUBETUNE_UPLOAD_MAX_BANDWIDTH_MB: cap of one rank's upload rate in MB/s (leave the NIC to
    the collectives); unset: no cap."""
    upload_give_up_seconds: float = 1800.0
    """KUBETUNE_UPLOAD_GIVE_UP_SECONDS: how long uploads keep retrying a storage that fails
    before the run fails."""
    kube_host: str | None = None
    """KUBERNETES_SERVICE_HOST: set by Kubernetes in every pod; unset: no cluster, logs only."""
    data_cache_key: str | None = None
    """KUBETUNE_DATA_CACHE_KEY: the tokenized data set the preflight stored under the spec's cache URI
    (status.preflight.cacheUri); the training processes read it instead of tokenizing. Unset: they
    read and tokenize spec.dataset themselves."""
    stall_at_step: int | None = None
    """KUBETUNE_TEST_STALL_AT_STEP: fault injection for testing hang handling: after this optimizer
    step the training loop of rank KUBETUNE_TEST_STALL_RANK (default 0) blocks for good, as a hung
    rank would. Never set it on a real job."""
    stall_rank: int = 0
    """KUBETUNE_TEST_STALL_RANK: the rank that KUBETUNE_TEST_STALL_AT_STEP blocks."""

    @property
    def in_cluster(self) -> bool:
        """A FineTuneJob to report to and an API server to reach."""
        return bool(self.job_name and self.namespace and self.kube_host)


def _number(environ: Mapping[str, str], name: str, kind: type[int] | type[float], minimum: float) -> float | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be a number (got {raw!r})") from None
    if value < minimum:
        raise ConfigError(f"environment variable {name} must be >= {minimum} (got {raw})")
    return value


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from `environ` (default: os.environ)."""
    env = os.environ if environ is None else environ
    defaults = Settings()

    def number(name: str, kind: type[int] | type[float], minimum: float, default: float) -> float:
        value = _number(env, name, kind, minimum)
        return default if value is None else value

    bandwidth = _number(env, "KUBETUNE_UPLOAD_MAX_BANDWIDTH_MB", float, 0.01)
    return Settings(
        config_path=env.get("KUBETUNE_CONFIG") or None,
        job_name=env.get("KUBETUNE_JOB_NAME") or None,
        namespace=env.get("KUBETUNE_NAMESPACE") or None,
        attempt=int(number("KUBETUNE_ATTEMPT", int, 1, defaults.attempt)),
        scratch_dir=Path(env.get("KUBETUNE_SCRATCH_DIR") or defaults.scratch_dir),
        pvc_root=env.get("KUBETUNE_PVC_ROOT") or defaults.pvc_root,
        service_account_dir=Path(env.get("KUBETUNE_SERVICE_ACCOUNT_DIR") or defaults.service_account_dir),
        status_interval_seconds=number("KUBETUNE_STATUS_INTERVAL_SECONDS", float, 0.0,
                                       defaults.status_interval_seconds),
        upload_concurrency=int(number("KUBETUNE_UPLOAD_CONCURRENCY", int, 1, defaults.upload_concurrency)),
        upload_chunk_bytes=int(number("KUBETUNE_UPLOAD_CHUNK_MB", int, 5, defaults.upload_chunk_bytes / MB) * MB),
        upload_max_bandwidth=int(bandwidth * MB) if bandwidth else None,
        upload_give_up_seconds=number("KUBETUNE_UPLOAD_GIVE_UP_SECONDS", float, 1.0,
                                      defaults.upload_give_up_seconds),
        kube_host=env.get("KUBERNETES_SERVICE_HOST") or None,
        data_cache_key=env.get("KUBETUNE_DATA_CACHE_KEY") or None,
        stall_at_step=None if (stall := _number(env, "KUBETUNE_TEST_STALL_AT_STEP", int, 1)) is None else int(stall),
        stall_rank=int(number("KUBETUNE_TEST_STALL_RANK", int, 0, defaults.stall_rank)),
    )
