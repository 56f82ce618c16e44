"""kubetune_api: the typed FineTuneJob API, shared by the operator and the trainer.

Needs only pydantic (no kopf, no torch). Parse a manifest's spec with
`parse_spec`, a whole job (what the operator hands the trainer) with `parse_job`;
build the CRD with `crd.build_crd`.
"""

from .constants import (
    API_VERSION,
    GROUP,
    JOB_NAME_LABEL,
    KIND,
    PLURAL,
    TERMINAL_PHASES,
    VERSION,
    Phase,
)
from .evaluation import LOWER_IS_BETTER, default_metric, improves, task_metrics
from .job import FineTuneJob, JobMetadata, parse_job
from .kube import Manifest
from .parse import FieldError, SpecError, parse_spec
from .spec import (
    CheckpointSpec,
    DatasetFields,
    DatasetSpec,
    DeepSpeedSpec,
    EarlyStoppingSpec,
    EvaluationSpec,
    FineTuneJobSpec,
    FreezeSpec,
    LoraSpec,
    MethodSpec,
    ModelSpec,
    OutputSpec,
    ResourcesSpec,
    RunPolicySpec,
    StorageSpec,
    TrainingSpec,
)
from .status import (
    CheckpointRef,
    CheckpointsStatus,
    Condition,
    EarlyStop,
    EvaluationRound,
    EvaluationStatus,
    FineTuneJobStatus,
    MetricValue,
    OutputStatus,
    ParametersStatus,
    ProgressStatus,
    RestartsStatus,
    WorkersStatus,
    progress_text,
)
from .timestamps import format_timestamp, parse_timestamp, utc_now
from .uris import StorageUri, parse_uri

__all__ = [
    "API_VERSION",
    "GROUP",
    "JOB_NAME_LABEL",
    "KIND",
    "LOWER_IS_BETTER",
    "PLURAL",
    "TERMINAL_PHASES",
    "VERSION",
    "CheckpointRef",
    "CheckpointSpec",
    "CheckpointsStatus",
    "Condition",
    "DatasetFields",
    "DatasetSpec",
    "DeepSpeedSpec",
    "EarlyStop",
    "EarlyStoppingSpec",
    "EvaluationRound",
    "EvaluationSpec",
    "EvaluationStatus",
    "FieldError",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "FreezeSpec",
    "JobMetadata",
    "LoraSpec",
    "Manifest",
    "MethodSpec",
    "MetricValue",
    "ModelSpec",
    "OutputSpec",
    "OutputStatus",
    "ParametersStatus",
    "Phase",
    "ProgressStatus",
    "ResourcesSpec",
    "RestartsStatus",
    "RunPolicySpec",
    "SpecError",
    "StorageSpec",
    "StorageUri",
    "TrainingSpec",
    "WorkersStatus",
    "default_metric",
    "format_timestamp",
    "improves",
    "parse_job",
    "parse_spec",
    "parse_timestamp",
    "parse_uri",
    "progress_text",
    "task_metrics",
    "utc_now",
]
