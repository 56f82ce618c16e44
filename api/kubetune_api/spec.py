"""The FineTuneJob spec: what to fine-tune, on what, how, and where it goes.

The single source of truth for the spec. The CRD's schema (`crd.py`) and the
field reference in docs/api.md are generated from these models; the operator
and the trainer get a validated, frozen instance from `parse.parse_spec`.
Descriptions are written for `kubectl explain`: what the field does, its unit,
and what leaving it out means (the CRD adds "Default: ..." where there is one).
The parts live in locations.py, training.py and resources.py; this module
assembles them, holds the rules that span parts, and re-exports them all.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from .base import NOT_SPACE, ApiModel, EmptyMeansUnset, ListMap, Matches, Rule, defaulted
from .evaluation import (
    CAUSAL_LM_METRICS,
    CLASSIFICATION_METRICS,
    EarlyStoppingSpec,
    EvaluationSpec,
    Task,
    task_metrics,
)
from .kube import (
    EnvFromSource,
    EnvVar,
    LocalObjectReference,
    PodMetadataSpec,
    PullPolicy,
    Volume,
    VolumeMount,
)
from .locations import (
    AddressingStyle,
    CheckpointSpec,
    DatasetFields,
    DatasetFormat,
    DatasetSpec,
    ModelSpec,
    OutputSpec,
    StorageSpec,
)
from .resources import PreflightResources, PreflightSpec, ResourcesSpec
from .training import (
    DeepSpeedSpec,
    FreezeSpec,
    LoraSpec,
    LrScheduler,
    MethodSpec,
    MethodType,
    Offload,
    Precision,
    TrainingSpec,
)
from .uris import parse_uri

__all__ = [
    "AddressingStyle",
    "CheckpointSpec",
    "DatasetFields",
    "DatasetFormat",
    "DatasetSpec",
    "DeepSpeedSpec",
    "EarlyStoppingSpec",
    "EvaluationSpec",
    "FineTuneJobSpec",
    "FreezeSpec",
    "LoraSpec",
    "LrScheduler",
    "MethodSpec",
    "MethodType",
    "ModelSpec",
    "Offload",
    "OutputSpec",
    "Precision",
    "PreflightResources",
    "PreflightSpec",
    "ResourcesSpec",
    "RunPolicySpec",
    "StorageSpec",
    "Task",
    "TrainingSpec",
]


class RunPolicySpec(ApiModel):
    """Retries, time limits and suspension: the only part of a spec that may change later."""

    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="Restarts after a trainer failure (a non-zero exit) before the job fails. "
        "Infrastructure failures (node lost, pod evicted or pre-empted) do not count.",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=31_536_000,
        description="Seconds from the job's start after which it fails with reason "
        "DeadlineExceeded; time spent suspended counts. Unset: no limit.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="Seconds after the job succeeds or fails before it is deleted with its "
        "children (the model and checkpoints in storage stay). Unset: never deleted.",
    )
    suspend: bool = Field(
        default=False,
        description="true deletes the worker pods and keeps everything else; false again "
        "recreates them, and training resumes from the latest committed checkpoint.",
    )
    progress_deadline_seconds: int = Field(
        default=1800,
        ge=10,
        le=86_400,
        description="Seconds a training process may go without completing an optimizer step "
        "(an evaluation or a checkpoint counts as progress) before it is considered hung: it writes "
        "the stacks of its threads to diagnostics/attempt-N/rank-R.txt under the checkpoint URI "
        "and exits, and the job restarts (reason Hang). Must exceed the longest evaluation. A change "
        "reaches the training processes of workers created after it (a restart or a resume); the "
        "operator's own check uses it at once.",
    )
    startup_deadline_seconds: int = Field(
        default=1800,
        ge=10,
        le=86_400,
        description="Seconds the workers may take to all be Running, and a training process to "
        "stage the model and data, join the others and finish its first step. Past it, workers "
        "that are not running make the job Stalled (reason WorkersNotStarted, no budget spent); "
        "a process that has not finished its first step counts as hung. A change reaches the "
        "training processes of workers created after it (a restart or a resume); the operator's "
        "checks use it at once.",
    )
    termination_grace_period_seconds: int = Field(
        default=300,
        ge=0,
        le=86_400,
        description="Seconds a worker has to stop when it is stopped on purpose (suspend, a "
        "deleted or pre-empted pod, a drained node): on SIGTERM every training process finishes "
        "its step, saves and commits a checkpoint and exits; after this many seconds Kubernetes "
        "kills it, and the last committed checkpoint stands. The default fits a 7B model's full "
        "training state (about 16 bytes a parameter over all ranks) on a store that takes a few "
        "hundred MB/s per node. Applies to workers created after a change.",
    )
    hang_restart_limit: int = Field(
        default=2,
        ge=0,
        le=1000,
        description="Restarts after a hang (see progressDeadlineSeconds) before the job fails; "
        "counted apart from backoffLimit.",
    )


_VOLUME_MOUNTS_RULE = Rule(
    field="volumeMounts",
    cel="!has(self.volumeMounts) || self.volumeMounts.all(m, "
    "has(self.volumes) && self.volumes.exists(v, v.name == m.name))",
    message="must each name a volume listed in spec.volumes",
    holds=lambda s: all(
        any(v.name == m.name for v in s.volumes or ()) for m in s.volume_mounts or ()
    ),
)


# The dataset formats each task reads.
TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "causal-lm": ("text", "prompt-completion", "chat"),
    "sequence-classification": ("classification",),
    "image-classification": ("image-classification",),
}
_HAS_EVAL_CEL = "((has(self.dataset.eval) && self.dataset.eval != '') || has(self.dataset.evalSplit))"


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def _global_batch_problem(global_batch: int, per_pass: int) -> str:
    lower = max(per_pass, global_batch // per_pass * per_pass)
    return (
        "must be a multiple of microBatchSize x resources.nodes x resources.gpusPerNode = "
        f"{per_pass} (got {global_batch}); use e.g. {lower} or {lower + per_pass}"
    )


class FineTuneJobSpec(ApiModel):
    """Desired state of a FineTuneJob. Only runPolicy may change after creation."""

    task: Task = Field(
        default="causal-lm",
        description="What the model learns. causal-lm: to continue text (GPT/Llama-class models; "
        "dataset formats text, prompt-completion, chat). sequence-classification: a label for a "
        "text or a text pair, with a classification head (BERT, RoBERTa, DeBERTa, decoder models "
        "too; format classification). image-classification: a label for an image (ViT, ResNet, "
        "ConvNeXt; format image-classification).",
    )
    model: ModelSpec = Field(description="The pretrained model to start from. Required.")
    dataset: DatasetSpec = Field(description="The records to train and evaluate on. Required.")
    method: MethodSpec = defaulted(MethodSpec, "Which weights are trained: all, or LoRA adapters.")
    training: TrainingSpec = Field(
        description="Length of training, optimizer and batch settings. Required (for epochs or "
        "maxSteps)."
    )
    evaluation: EvaluationSpec = defaulted(
        EvaluationSpec,
        "How the model is judged on the evaluation records: the metric that picks the best "
        "checkpoint, and early stopping.",
    )
    deepspeed: DeepSpeedSpec = defaulted(
        DeepSpeedSpec, "How DeepSpeed shards the training state over the GPUs."
    )
    resources: ResourcesSpec = defaulted(
        ResourcesSpec, "How many machines and GPUs the job uses, and where its pods may run."
    )
    preflight: PreflightSpec = defaulted(
        PreflightSpec,
        "The CPU-only check of storage, model and data before any worker pod, and the "
        "tokenized-data cache it fills.",
    )
    image: Annotated[
        Annotated[
            str,
            Field(max_length=512),
            Matches(f"{NOT_SPACE}+", "a container image reference without spaces"),
        ]
        | None,
        EmptyMeansUnset(),
    ] = Field(
        default=None,
        description="Container image of the workers; it must contain the kubetune trainer. "
        "Unset or empty: the trainer image the operator was deployed with.",
    )
    image_pull_policy: PullPolicy | None = Field(
        default=None,
        description="When the image is pulled: Always, IfNotPresent or Never. Unset: "
        "Kubernetes' default (Always for :latest or no tag, IfNotPresent otherwise).",
    )
    image_pull_secrets: (
        Annotated[list[LocalObjectReference], Field(max_length=16), ListMap("name")] | None
    ) = Field(
        default=None,
        description="Secrets with registry credentials for pulling the image, as in a Pod. "
        "Unset: none.",
    )
    env: Annotated[list[EnvVar], Field(max_length=128), ListMap("name")] | None = Field(
        default=None,
        description="Extra environment variables of every trainer process, as in a container "
        "(value, or valueFrom a Secret or ConfigMap key). Unset: none.",
    )
    env_from: Annotated[list[EnvFromSource], Field(max_length=32)] | None = Field(
        default=None,
        description="Secrets and ConfigMaps whose keys all become environment variables, as in "
        "a container. Unset: none.",
    )
    volumes: Annotated[list[Volume], Field(max_length=64), ListMap("name")] | None = Field(
        default=None,
        description="Extra pod volumes, exactly as in a Pod (for pvc:// URIs the operator adds "
        "the volumes itself). Unset: none.",
    )
    volume_mounts: (
        Annotated[list[VolumeMount], Field(max_length=64), ListMap("mountPath")] | None
    ) = Field(
        default=None,
        description="Where the volumes appear in the trainer container, as in a container. "
        "Unset: none.",
    )
    pod_metadata: PodMetadataSpec | None = Field(
        default=None,
        description="Labels and annotations of every worker pod, beside the operator's own (which "
        "they may not name). Unset: only the operator's.",
    )
    checkpoint: CheckpointSpec = defaulted(
        CheckpointSpec, "Where and how often training state is saved, so a job can resume."
    )
    output: OutputSpec = Field(description="Where the fine-tuned model goes. Required.")
    storage: StorageSpec = defaulted(
        StorageSpec, "How the job reaches the S3-compatible store of its s3:// URIs."
    )
    run_policy: RunPolicySpec = defaulted(
        RunPolicySpec,
        "Retries, time limits and suspension; the only part of the spec that may change after "
        "creation.",
    )

    # Fields (camelCase) that may change after creation; every other spec field
    # is immutable, enforced by the CRD's transition rules.
    MUTABLE_FIELDS: ClassVar[frozenset[str]] = frozenset({"runPolicy"})

    RULES = (
        Rule(
            field="training.globalBatchSize",
            # The guards keep a schema error elsewhere (microBatchSize: 0) from
            # also surfacing as a "modulus by zero" here.
            cel="!has(self.training.globalBatchSize) || self.training.microBatchSize < 1 || "
            "self.resources.nodes < 1 || self.training.globalBatchSize % "
            "(self.training.microBatchSize * self.resources.nodes * "
            "(self.resources.gpusPerNode > 0 ? self.resources.gpusPerNode : 1)) == 0",
            message="must be a multiple of microBatchSize x resources.nodes x "
            "resources.gpusPerNode (a node without GPUs counts as 1)",
            explain=lambda s: _global_batch_problem(
                s.training.global_batch_size, s.training.micro_batch_size * s.resources.world_size
            ),
            holds=lambda s: (
                s.training.global_batch_size is None
                or s.training.global_batch_size
                % (s.training.micro_batch_size * s.resources.world_size)
                == 0
            ),
        ),
        Rule(
            field="training.evalEverySteps",
            cel="!has(self.training.evalEverySteps) || (has(self.dataset.eval) && "
            "self.dataset.eval != '') || has(self.dataset.evalSplit)",
            message="needs evaluation records: set dataset.eval or dataset.evalSplit, or remove it",
            holds=lambda s: s.training.eval_every_steps is None or s.dataset.has_eval,
            reason="FieldValueForbidden",
        ),
        Rule(
            field="output.mergeLora",
            cel="!self.output.mergeLora || self.method.type == 'lora'",
            message="applies only to method type lora; set it to false or use method type lora",
            holds=lambda s: not s.output.merge_lora or s.method.type == "lora",
            reason="FieldValueForbidden",
        ),
        Rule(
            field="dataset.format",
            cel=" || ".join(
                f"(self.task == '{task}' && self.dataset.format in {_cel_list(formats)})"
                for task, formats in TASK_FORMATS.items()
            ),
            message="must suit spec.task: text, prompt-completion or chat for causal-lm, "
            "classification for sequence-classification, image-classification for "
            "image-classification",
            holds=lambda s: s.dataset.format in TASK_FORMATS[s.task],
        ),
        Rule(
            field="evaluation.metric",
            cel="!has(self.evaluation.metric) || (self.task == 'causal-lm' ? "
            f"self.evaluation.metric in {_cel_list(CAUSAL_LM_METRICS)} : "
            f"self.evaluation.metric in {_cel_list(CLASSIFICATION_METRICS)})",
            message="must be a metric of spec.task: eval_loss, perplexity or token_accuracy for "
            "causal-lm; eval_loss, accuracy, f1_macro, f1_weighted, precision_macro, "
            "recall_macro, precision_weighted or recall_weighted for classification",
            holds=lambda s: s.evaluation.metric is None or s.evaluation.metric in task_metrics(s.task),
        ),
        Rule(
            field="evaluation.earlyStopping",
            cel=f"!has(self.evaluation.earlyStopping) || {_HAS_EVAL_CEL}",
            message="needs evaluation records: set dataset.eval or dataset.evalSplit, or remove it",
            holds=lambda s: s.evaluation.early_stopping is None or s.dataset.has_eval,
            reason="FieldValueForbidden",
        ),
        Rule(
            field="output.select",
            cel=f"!has(self.output.select) || self.output.select != 'best' || {_HAS_EVAL_CEL}",
            message="best needs evaluation records: set dataset.eval or dataset.evalSplit, or "
            "select last",
            holds=lambda s: s.output.select != "best" or s.dataset.has_eval,
        ),
        _VOLUME_MOUNTS_RULE,
    )

    @property
    def metric(self) -> str:
        """The evaluation metric in force (spec.evaluation.metric, or the task's default)."""
        return self.evaluation.metric_for(self.task)

    @property
    def output_select(self) -> str:
        """Which model is published: best (the best committed checkpoint) or last."""
        return self.output.select or ("best" if self.dataset.has_eval else "last")

    @property
    def world_size(self) -> int:
        """Training processes over all nodes (nodes x max(gpusPerNode, 1))."""
        return self.resources.world_size

    @property
    def checkpoint_uri(self) -> str:
        """Where checkpoints go: checkpoint.uri, or <output.uri>/checkpoints/."""
        return self.checkpoint.uri or parse_uri(self.output.uri).child("checkpoints") + "/"

    @property
    def cache_uri(self) -> str:
        """The tokenized-data cache: preflight.cacheUri, or kubetune-cache/ at the root of the
        checkpoint location's bucket or claim."""
        if self.preflight.cache_uri:
            return self.preflight.cache_uri.rstrip("/") + "/"
        location = parse_uri(self.checkpoint_uri)
        return f"{location.scheme}://{location.location}/kubetune-cache/"

    def pvc_claims(self) -> list[str]:
        """PersistentVolumeClaims named by pvc:// URIs, which every worker must mount."""
        uris = [self.model.uri, self.dataset.train, self.dataset.eval, self.checkpoint_uri]
        uris += [self.output.uri, self.cache_uri if self.preflight.enabled else None]
        claims = {parse_uri(u).location for u in uris if u and u.startswith("pvc://")}
        return sorted(claims)
