"""The worker pods of a FineTuneJob: one per node, each running torchrun under the launcher.

A pure function of the job, its spec and the gang attempt. Every worker of an
attempt is built the same way except for its rank; workers use static
rendezvous at rank 0's stable DNS name, so ranks are fixed by pod, not by
arrival, and a recreated gang finds itself again under the same names.
"""

from __future__ import annotations

from typing import Any

from kubetune_api import FineTuneJobSpec, Manifest
from kubetune_api.constants import (
    CONFIG_ANNOTATION,
    GPU_RESOURCE,
    PVC_MOUNT_ROOT,
    S3_ACCESS_KEY_ID_KEY,
    S3_ENDPOINT_URL_KEY,
    S3_SECRET_ACCESS_KEY_KEY,
    S3_SESSION_TOKEN_KEY,
)

from .children import (
    CONFIG_FILE,
    CONFIG_MOUNT,
    RENDEZVOUS_PORT,
    JobRef,
    metadata,
    trainer_config,
)

RANK_LABEL = "kubetune.io/rank"
ATTEMPT_LABEL = "kubetune.io/attempt"
TRAINER_CONTAINER = "trainer"
SCRATCH_MOUNT = "/var/lib/kubetune"
# Non-root by default; the trainer image creates this user.
WORKER_UID = 1000
# Used when spec.image is unset (KUBETUNE_TRAINER_IMAGE overrides it).
DEFAULT_TRAINER_IMAGE = "ghcr.io/kubetune/trainer:0.1.0"


def _downward(field_path: str) -> dict[str, Any]:
    return {"fieldRef": {"fieldPath": field_path}}


def _secret_key(secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"secretKeyRef": ref}


def storage_env(spec: FineTuneJobSpec) -> list[Manifest]:
    """How the trainer reaches the store of s3:// URIs. S3 keys are references to the user's Secret, never
    copied."""
    env: list[Manifest] = []
    storage = spec.storage
    if storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": storage.endpoint})
    if storage.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": storage.region})
    if storage.credentials_secret:
        secret = storage.credentials_secret
        env += [
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": _secret_key(secret, S3_ACCESS_KEY_ID_KEY)},
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": _secret_key(secret, S3_SECRET_ACCESS_KEY_KEY)},
            {"name": "AWS_SESSION_TOKEN", "valueFrom": _secret_key(secret, S3_SESSION_TOKEN_KEY, optional=True)},
        ]
        if not storage.endpoint:  # the Secret may say where the store is, beside its keys
            env.append({"name": "AWS_ENDPOINT_URL", "valueFrom": _secret_key(secret, S3_ENDPOINT_URL_KEY, optional=True)})
    return env


def _base_env(job: JobRef) -> list[Manifest]:
    return [
        {"name": "KUBETUNE_CONFIG", "value": f"{CONFIG_MOUNT}/{CONFIG_FILE}"},
        {"name": "KUBETUNE_JOB_NAME", "value": job.name},
        {"name": "KUBETUNE_NAMESPACE", "valueFrom": _downward("metadata.namespace")},
    ]


def worker_env(job: JobRef, spec: FineTuneJobSpec, attempt: int, data_cache_key: str | None = None) -> list[Manifest]:
    """The trainer's environment (each variable is read by the trainer's settings)."""
    env: list[Manifest] = [
        *_base_env(job),
        {"name": "KUBETUNE_ATTEMPT", "value": str(attempt)},
        {"name": "KUBETUNE_SCRATCH_DIR", "value": SCRATCH_MOUNT},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if data_cache_key:  # the preflight's tokenized data set: the workers read it instead of tokenizing
        env.append({"name": "KUBETUNE_DATA_CACHE_KEY", "value": data_cache_key})
    env += storage_env(spec)
    if (threads := threads_per_process(spec)) is not None:
        env.append({"name": "OMP_NUM_THREADS", "value": str(threads)})
    # The user's variables come last so they can override ours (e.g. NCCL settings).
    env += [e.to_manifest() for e in spec.env or ()]
    return env


def cpu_cores(quantity: int | str) -> float | None:
    """A CPU quantity in cores ("2", "1.5", "500m", 4); None for a form this reader does not know."""
    text = str(quantity).strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def threads_per_process(spec: FineTuneJobSpec) -> int | None:
    """The CPU threads each training process may use (OMP_NUM_THREADS): the pod's CPU (its limit,
    else its request) shared by its processes, at least one. None when the spec names no CPU: then
    torchrun's default applies (1 with several processes per pod, else every core the pod sees).

    Without it, torch starts one thread per core it sees, in every process of every pod on the
    machine; where pods share cores that oversubscribes them, and OpenMP's spinning threads make a
    step several times slower (on a 2-core machine, two 1-process workers: 17 s for the first step
    instead of 6 s)."""
    res = spec.resources
    quantity = (res.limits or {}).get("cpu") or (res.requests or {}).get("cpu")
    cores = None if quantity is None else cpu_cores(quantity)
    if cores is None:
        return None
    return max(1, int(cores // res.processes_per_node))


def torchrun_args(job: JobRef, spec: FineTuneJobSpec, rank: int) -> list[str]:
    return [
        f"--nnodes={spec.resources.nodes}",
        f"--node-rank={rank}",
        f"--nproc-per-node={spec.resources.processes_per_node}",
        "--rdzv-backend=static",
        f"--rdzv-endpoint={job.worker_dns(0)}:{RENDEZVOUS_PORT}",
        # Restarts are gang-wide and decided by the operator, never by torchrun alone.
        "--max-restarts=0",
        "-m", "kubetune_trainer",
    ]


def _volumes(spec: FineTuneJobSpec) -> tuple[list[Manifest], list[Manifest]]:
    volumes: list[Manifest] = [
        # The trainer's config, from the pod's own annotation (no object of its own to create and read).
        {"name": "config", "downwardAPI": {"items": [
            {"path": CONFIG_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"}}]}},
        # NCCL and the data loaders need far more shared memory than a container's 64 MiB default.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        # Local staging of checkpoint shards before they stream to S3.
        {"name": "scratch", "emptyDir": {}},
    ]
    mounts: list[Manifest] = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": SCRATCH_MOUNT},
    ]
    for claim in spec.pvc_claims():
        name = f"pvc-{claim}"[:63].rstrip("-")
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": name, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}"})
    volumes += [v.to_manifest() for v in spec.volumes or ()]
    mounts += [m.to_manifest() for m in spec.volume_mounts or ()]
    return volumes, mounts


def _resources(spec: FineTuneJobSpec) -> Manifest:
    res = spec.resources
    requests = {k: str(v) for k, v in (res.requests or {}).items()}
    limits = {k: str(v) for k, v in (res.limits or {}).items()}
    if res.gpus_per_node:
        # Extended resources are set as limits; the scheduler takes requests from them.
        limits[GPU_RESOURCE] = str(res.gpus_per_node)
    out: Manifest = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


_CONTAINER_SECURITY: Manifest = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
}
_POD_SECURITY: Manifest = {
    "runAsNonRoot": True,
    "runAsUser": WORKER_UID,
    "runAsGroup": WORKER_UID,
    "fsGroup": WORKER_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _container(spec: FineTuneJobSpec, default_image: str, run: Manifest, env: list[Manifest], resources: Manifest,
               mounts: list[Manifest], ports: list[Manifest] | None = None) -> Manifest:
    """The trainer container: the job's image running `run` (command and args)."""
    container: Manifest = {
        "name": TRAINER_CONTAINER,
        "image": spec.image or default_image,
        **run,
        "env": env,
        **({"ports": ports} if ports else {}),
        "resources": resources,
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(_CONTAINER_SECURITY),
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if spec.env_from:
        container["envFrom"] = [e.to_manifest() for e in spec.env_from]
    return container


def _pod_metadata(job: JobRef, spec: FineTuneJobSpec, name: str, component: str,
                  extra_labels: dict[str, str]) -> Manifest:
    meta = metadata(job, name, component)
    extra = spec.pod_metadata
    # The user's labels and annotations beside the operator's: admission refuses the operator's keys,
    # and ours win anyway.
    meta["labels"] = {**((extra and extra.labels) or {}), **meta["labels"], **extra_labels}
    meta["annotations"] = {**((extra and extra.annotations) or {}), CONFIG_ANNOTATION: trainer_config(job, spec)}
    return meta


PREFLIGHT_COMPONENT = "preflight"


def build_preflight_pod(job: JobRef, spec: FineTuneJobSpec, default_image: str = DEFAULT_TRAINER_IMAGE) -> Manifest:
    """The job's preflight: `python -m kubetune_trainer.preflight` in one pod without GPUs, with the
    workers' image, config, storage credentials and volumes, and spec.preflight.resources. It needs no
    API access (the operator reads its result from its termination message) and no GPU node: none of
    spec.resources' placement applies."""
    volumes, mounts = _volumes(spec)
    res = spec.preflight.resources_or_default()
    resources: Manifest = {}
    if res.requests:
        resources["requests"] = {k: str(v) for k, v in res.requests.items()}
    if res.limits:
        resources["limits"] = {k: str(v) for k, v in res.limits.items()}
    env = [*_base_env(job), {"name": "KUBETUNE_SCRATCH_DIR", "value": SCRATCH_MOUNT},
           {"name": "PYTHONUNBUFFERED", "value": "1"}, *storage_env(spec), *[e.to_manifest() for e in spec.env or ()]]
    # Its report (JSON) or its one-line failure is its termination message: the operator copies it into
    # status.preflight.
    container = _container(spec, default_image, {"command": ["python", "-m", "kubetune_trainer.preflight"]},
                           env, resources, mounts)
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "serviceAccountName": job.service_account_name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": volumes,
        "securityContext": dict(_POD_SECURITY),
    }
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [s.to_manifest() for s in spec.image_pull_secrets]
    if spec.preflight.node_selector:
        pod_spec["nodeSelector"] = dict(spec.preflight.node_selector)
    if spec.preflight.tolerations:
        pod_spec["tolerations"] = list(spec.preflight.tolerations)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": _pod_metadata(job, spec, job.preflight_name, PREFLIGHT_COMPONENT, {}),
            "spec": pod_spec}


def build_worker_pod(job: JobRef, spec: FineTuneJobSpec, rank: int, attempt: int,
                     default_image: str = DEFAULT_TRAINER_IMAGE, data_cache_key: str | None = None) -> Manifest:
    """Worker `rank` of gang attempt `attempt`; `default_image` runs it when spec.image is unset;
    `data_cache_key` names the preflight's tokenized data set, which it reads instead of tokenizing."""
    volumes, mounts = _volumes(spec)
    meta_labels = {RANK_LABEL: str(rank), ATTEMPT_LABEL: str(attempt)}
    # The launcher runs torchrun and gives the training processes the pod's SIGTERM, so they commit a
    # checkpoint within the grace period (torchrun alone kills them after 30 s). The trainer writes its
    # one-line failure reason as its termination message; the operator reports it.
    container = _container(spec, default_image, {
        "command": ["python", "-m", "kubetune_trainer.launch"],
        "args": ["torchrun", *torchrun_args(job, spec, rank)],
    }, worker_env(job, spec, attempt, data_cache_key), _resources(spec), mounts,
        ports=[{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}])

    res = spec.resources
    pod_spec: Manifest = {
        "restartPolicy": "Never",  # a failed worker fails the gang; the operator restarts it
        "terminationGracePeriodSeconds": spec.run_policy.termination_grace_period_seconds,
        "hostname": job.worker_name(rank),
        "subdomain": job.service_name,
        "serviceAccountName": job.service_account_name,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": volumes,
        "securityContext": dict(_POD_SECURITY),
    }
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = list(res.tolerations)
    if res.affinity:
        pod_spec["affinity"] = res.affinity
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    if res.scheduler_name:
        pod_spec["schedulerName"] = res.scheduler_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [s.to_manifest() for s in spec.image_pull_secrets]

    meta = _pod_metadata(job, spec, job.worker_name(rank), "worker", meta_labels)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def build_workers(job: JobRef, spec: FineTuneJobSpec, attempt: int,
                  default_image: str = DEFAULT_TRAINER_IMAGE) -> list[Manifest]:
    return [build_worker_pod(job, spec, rank, attempt, default_image) for rank in range(spec.resources.nodes)]
