"""The objects a FineTuneJob owns, other than its worker pods, as plain manifests.

Pure functions of the job: no clock, no API, no environment. Every child has a
deterministic name, the job-name label and an ownerReference to the job, so
creating it twice is harmless and deleting the job deletes it (the garbage
collector does that, not the operator).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kubetune_api import FineTuneJob, FineTuneJobSpec, JobMetadata, Manifest
from kubetune_api.constants import API_VERSION, GROUP, JOB_NAME_LABEL, KIND, PLURAL

RENDEZVOUS_PORT = 29500
# Where the trainer finds its config (trainer_config) in a worker pod.
CONFIG_FILE = "config.json"
CONFIG_MOUNT = "/etc/kubetune"


@dataclass(frozen=True)
class JobRef:
    """The identity of a FineTuneJob that its children point back to."""

    name: str
    namespace: str
    uid: str

    @property
    def service_name(self) -> str:
        return self.name

    @property
    def service_account_name(self) -> str:
        return f"{self.name}-worker"

    def worker_name(self, rank: int) -> str:
        return f"{self.name}-worker-{rank}"

    def worker_dns(self, rank: int) -> str:
        """The stable DNS name of a worker pod, through the headless Service."""
        return f"{self.worker_name(rank)}.{self.service_name}.{self.namespace}.svc"


def labels(job: JobRef, component: str) -> dict[str, str]:
    return {
        JOB_NAME_LABEL: job.name,
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "kubetune-operator",
    }


def metadata(job: JobRef, name: str, component: str) -> Manifest:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels(job, component),
        "ownerReferences": [{
            "apiVersion": API_VERSION, "kind": KIND, "name": job.name, "uid": job.uid,
            "controller": True, "blockOwnerDeletion": True,
        }],
    }


def build_service(job: JobRef) -> Manifest:
    """Headless Service giving each worker the DNS name `<job>-worker-<rank>.<job>.<ns>.svc`."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(job, job.service_name, "rendezvous"),
        "spec": {
            "clusterIP": "None",
            "selector": {JOB_NAME_LABEL: job.name},
            # Workers must find each other before any of them is Ready.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def trainer_job(job: JobRef, spec: FineTuneJobSpec) -> FineTuneJob:
    """What the trainer reads: the job's identity and its parsed spec, as one FineTuneJob manifest."""
    return FineTuneJob(metadata=JobMetadata(name=job.name, namespace=job.namespace, uid=job.uid), spec=spec)


def trainer_config(job: JobRef, spec: FineTuneJobSpec) -> str:
    """The trainer's config.json, as every worker pod carries it: compact (it is stored in each pod,
    and sent with each of the pod's changes), keys sorted. It holds names of Secrets, never their
    contents."""
    return json.dumps(trainer_job(job, spec).to_manifest(), sort_keys=True, separators=(",", ":"))


def build_service_account(job: JobRef) -> Manifest:
    return {
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": metadata(job, job.service_account_name, "worker-identity"),
    }


def build_role(job: JobRef) -> Manifest:
    """The workers may read and patch the status of their own FineTuneJob, and nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": metadata(job, job.service_account_name, "worker-identity"),
        "rules": [{
            "apiGroups": [GROUP],
            "resources": [f"{PLURAL}/status"],
            "resourceNames": [job.name],
            "verbs": ["get", "patch"],
        }],
    }


def build_role_binding(job: JobRef) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": metadata(job, job.service_account_name, "worker-identity"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": job.service_account_name},
        "subjects": [{"kind": "ServiceAccount", "name": job.service_account_name, "namespace": job.namespace}],
    }


def build_children(job: JobRef) -> list[Manifest]:
    """Everything a job owns besides its workers, in the order it is created. (The trainer's config
    travels in each worker pod: workers.py.)"""
    return [
        build_service_account(job),
        build_role(job),
        build_role_binding(job),
        build_service(job),
    ]
