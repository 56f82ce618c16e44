"""kubetune_api: the typed FineTuneJob API, shared by the operator and the trainer.

Needs only pydantic (no kopf, no torch). Parse a manifest's spec with
`parse_spec`; build the CRD with `crd.build_crd`.
"""

from .constants import API_VERSION, GROUP, JOB_NAME_LABEL, KIND, PLURAL, VERSION
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
from .uris import StorageUri, parse_uri

__all__ = [
    "API_VERSION",
    "GROUP",
    "JOB_NAME_LABEL",
    "KIND",
    "PLURAL",
    "VERSION",
    "CheckpointRef",
    "CheckpointSpec",
    "CheckpointsStatus",
    "Condition",
    "DatasetFields",
    "DatasetSpec",
    "DeepSpeedSpec",
    "FieldError",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "LoraSpec",
    "MethodSpec",
    "ModelSpec",
    "OutputSpec",
    "OutputStatus",
    "ProgressStatus",
    "ResourcesSpec",
    "RestartsStatus",
    "RunPolicySpec",
    "SpecError",
    "StorageSpec",
    "StorageUri",
    "TrainingSpec",
    "WorkersStatus",
    "parse_spec",
    "parse_uri",
    "progress_text",
]
