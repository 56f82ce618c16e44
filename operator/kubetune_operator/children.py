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
# The identity of every worker pod in a namespace (namespace_identity): a ServiceAccount, and a Role bound to it
# that lets it read and patch the status of FineTuneJobs. The ValidatingAdmissionPolicy in
# charts/kubetune/files/worker-status-policy.yaml narrows that to the job the pod works for: its token names the
# pod, and only pods named `<job>-worker-<rank>` may patch `<job>`.
WORKER_SERVICE_ACCOUNT = "kubetune-worker"


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
        return WORKER_SERVICE_ACCOUNT

    @property
    def preflight_name(self) -> str:
        return f"{self.name}-preflight"

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


def namespace_identity(namespace: str) -> list[Manifest]:
    """The ServiceAccount of every worker pod in `namespace`, and the Role and RoleBinding that let it read and
    patch the status of FineTuneJobs (the admission policy allows a pod only its own job's). They belong to the
    namespace, not to a job: created once, when the namespace's first job starts, and kept, as the namespace's
    `default` ServiceAccount is. One identity per namespace instead of one per job spares three creates per job."""
    def meta() -> Manifest:
        return {"name": WORKER_SERVICE_ACCOUNT, "namespace": namespace,
                "labels": {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/component": "worker-identity",
                           "app.kubernetes.io/managed-by": "kubetune-operator"}}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(),
         "rules": [{"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": WORKER_SERVICE_ACCOUNT},
         "subjects": [{"kind": "ServiceAccount", "name": WORKER_SERVICE_ACCOUNT, "namespace": namespace}]},
    ]


def build_children(job: JobRef) -> list[Manifest]:
    """Everything a job owns besides its workers, in the order it is created. (The trainer's config
    travels in each worker pod: workers.py; their identity is the namespace's: namespace_identity.)"""
    return [build_service(job)]
