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
from .job import FineTuneJob, JobMetadata, parse_job
from .kube import Manifest
from .parse import FieldError, SpecError, parse_spec
from .spec import (
    CheckpointSpec,
    DatasetFields,
    DatasetSpec,
    DeepSpeedSpec,
    FineTuneJobSpec,
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
    FineTuneJobStatus,
    OutputStatus,
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
    "FieldError",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "JobMetadata",
    "LoraSpec",
    "Manifest",
    "MethodSpec",
    "ModelSpec",
    "OutputSpec",
    "OutputStatus",
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
    "format_timestamp",
    "parse_job",
    "parse_spec",
    "parse_timestamp",
    "parse_uri",
    "progress_text",
    "utc_now",
]
