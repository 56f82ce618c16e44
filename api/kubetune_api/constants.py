"""Names shared by the operator and the trainer: the resource's identity, labels,
phases, condition types and reasons.

They live in one place (as JobSet and Kubeflow Trainer keep theirs) so that the
operator writing a condition and a dashboard or test reading it can never spell
it differently.
"""

from enum import StrEnum
from typing import Final

GROUP: Final = "kubetune.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "FineTuneJob"
LIST_KIND: Final = "FineTuneJobList"
PLURAL: Final = "finetunejobs"
SINGULAR: Final = "finetunejob"
SHORT_NAMES: Final = ("ftj",)
CATEGORIES: Final = ("kubetune",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# Every child object of a job carries this label with the job's name.
JOB_NAME_LABEL: Final = f"{GROUP}/job-name"

# Every worker pod carries the trainer's config (the job's identity and parsed spec, as one
# FineTuneJob manifest in JSON) in this annotation; a downward-API volume makes it a file.
CONFIG_ANNOTATION: Final = f"{GROUP}/config"

# A FineTuneJob's name becomes part of pod host names and of a Service name
# (a DNS-1035 label of at most 63 characters); the rest is left for suffixes
# such as "-worker-12".
MAX_JOB_NAME_LENGTH: Final = 50

# Node label that NVIDIA GPU feature discovery sets to the memory of each GPU, in MiB; a
# spec.resources.nodeSelector naming it tells the preflight how much memory each GPU has.
GPU_MEMORY_LABEL: Final = "nvidia.com/gpu.memory"

# The GPU resource every worker pod requests (spec.resources.gpusPerNode of it).
GPU_RESOURCE: Final = "nvidia.com/gpu"

# Where a worker pod mounts the PersistentVolumeClaim named in a pvc:// URI:
# pvc://<claim>/<path> is the file or folder <PVC_MOUNT_ROOT>/<claim>/<path>.
PVC_MOUNT_ROOT: Final = "/mnt/kubetune/pvc"

# Keys read from the Secret named by spec.storage.credentialsSecret.
S3_ACCESS_KEY_ID_KEY: Final = "AWS_ACCESS_KEY_ID"
S3_SECRET_ACCESS_KEY_KEY: Final = "AWS_SECRET_ACCESS_KEY"
S3_SESSION_TOKEN_KEY: Final = "AWS_SESSION_TOKEN"  # optional key
S3_ENDPOINT_URL_KEY: Final = "AWS_ENDPOINT_URL"  # optional key, used when spec.storage.endpoint is unset

# status.phase: the one list of phases (the status model, the CRD's enum, the
# operator's decisions and its metrics all read it from here).
class Phase(StrEnum):
    """Queued, Pending, Running, Restarting, Suspended, Succeeded or Failed; the last two are final.

    Queued: the job waits for Kueue to admit it (it has the kueue.x-k8s.io/queue-name label); no
    worker pod exists."""

    QUEUED = "Queued"
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TERMINAL_PHASES: Final = frozenset({Phase.SUCCEEDED, Phase.FAILED})

# status.conditions[].type, after the kstatus convention (Ready, Reconciling,
# Stalled) plus the terminal outcomes that `kubectl wait --for=condition=...` uses.
CONDITION_READY: Final = "Ready"
CONDITION_RECONCILING: Final = "Reconciling"
CONDITION_STALLED: Final = "Stalled"
CONDITION_SUCCEEDED: Final = "Succeeded"
CONDITION_FAILED: Final = "Failed"
# True while a job waits for Kueue's admission (phase Queued); False once admitted.
CONDITION_QUEUED: Final = "Queued"
CONDITION_TYPES: Final = (
    CONDITION_READY,
    CONDITION_RECONCILING,
    CONDITION_STALLED,
    CONDITION_SUCCEEDED,
    CONDITION_FAILED,
    CONDITION_QUEUED,
)

# status.conditions[].reason (CamelCase, as metav1.Condition requires).
REASON_INVALID_SPEC: Final = "InvalidSpec"
REASON_CREATING_WORKERS: Final = "CreatingWorkers"
REASON_WAITING_FOR_WORKERS: Final = "WaitingForWorkers"
REASON_WORKERS_RUNNING: Final = "WorkersRunning"
REASON_WORKER_FAILED: Final = "WorkerFailed"
REASON_INFRASTRUCTURE_FAILURE: Final = "InfrastructureFailure"
REASON_RESTARTING: Final = "Restarting"
REASON_SUSPENDED: Final = "Suspended"
REASON_RESUMED: Final = "Resumed"
REASON_TRAINING_COMPLETE: Final = "TrainingComplete"
REASON_EARLY_STOPPED: Final = "EarlyStopped"
REASON_BACKOFF_LIMIT_EXCEEDED: Final = "BackoffLimitExceeded"
REASON_DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
REASON_HANG: Final = "Hang"
REASON_HANG_LIMIT_EXCEEDED: Final = "HangLimitExceeded"
REASON_WORKERS_NOT_STARTED: Final = "WorkersNotStarted"
# The preflight pod (spec.preflight) checks storage, model and data on CPU before any worker exists.
REASON_PREFLIGHT: Final = "Preflight"
REASON_PREFLIGHT_FAILED: Final = "PreflightFailed"
# The first word of a trainer's termination message when its watchdog found it hung.
HANG_MESSAGE_PREFIX: Final = "Hang:"
# The beginning of a trainer's termination message when it stopped on SIGTERM after committing a
# checkpoint (a worker stopped on purpose: not the application's failure).
STOPPED_MESSAGE_PREFIX: Final = "Stopped at step"
REASON_WORKER_STOPPED: Final = "WorkerStopped"

# Kueue: a job with this label is admitted by Kueue (through a Workload the operator owns) before
# any worker pod exists; the optional priority label names a WorkloadPriorityClass.
KUEUE_QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL: Final = "kueue.x-k8s.io/priority-class"
REASON_QUEUED: Final = "Queued"
REASON_KUEUE_MISSING: Final = "KueueNotInstalled"
REASON_ADMITTED: Final = "Admitted"
REASON_EVICTED: Final = "Evicted"
