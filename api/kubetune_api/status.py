"""The FineTuneJob status: what the operator and the trainer report.

The operator writes the lifecycle (phase, conditions, times, workers, restarts,
message); rank 0 of the trainer patches what only it knows (`progress`,
`progressText`, `checkpoints`, `evaluation`, `parameters`, `output`) while it
trains. Each writes only its
own fields with a merge patch. Unlike the spec, these models are
lenient when reading (unknown keys are ignored, so an older operator can read a
status a newer trainer wrote) and the CRD constrains the status only as far as
readers rely on it: types, non-negative counters, known phases.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from .base import ListMap
from .constants import TERMINAL_PHASES, Phase
from .timestamps import format_timestamp

ConditionStatus = Literal["True", "False", "Unknown"]

Timestamp = Annotated[datetime, PlainSerializer(format_timestamp, return_type=str, when_used="json")]
"""A point in time, written as RFC 3339 in UTC to the second (like metav1.Time)."""

Count = Annotated[int, Field(ge=0)]


class StatusModel(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        allow_inf_nan=False,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    def to_manifest(self) -> dict[str, object]:
        """The status as JSON-ready data (camelCase, fields without a value left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_patch(self) -> dict[str, object]:
        """Only the fields given when the model was built, for a JSON merge patch: the operator
        and the trainer each write their own part of one status, and a field one of them leaves
        out (even one with a default, such as checkpoints.committed) stays as the other wrote it."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)


class Condition(StatusModel):
    """One aspect of the job's state, in the shape of metav1.Condition."""

    type: str = Field(
        max_length=316,
        description="Ready, Reconciling, Stalled, Succeeded or Failed.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: Count | None = Field(
        default=None,
        description="metadata.generation of the spec this condition was computed from.",
    )
    last_transition_time: Timestamp = Field(description="When status last changed.")
    reason: str = Field(
        max_length=1024, description="CamelCase reason of the last transition, e.g. InvalidSpec."
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")


class WorkersStatus(StatusModel):
    """Worker pods of the current attempt."""

    ready: Count = Field(default=0, description="Worker pods running and ready.")
    total: Count = Field(default=0, description="Worker pods the job needs (spec.resources.nodes).")
    attempt: Count = Field(
        default=1,
        description="Gang attempt the workers belong to: 1, plus one for every gang restart.",
    )
    launched: bool = Field(
        default=False,
        description="Every worker of this attempt has been created (a worker missing after that "
        "was lost, and restarts the gang).",
    )


class RestartsStatus(StatusModel):
    """Gang restarts so far, by cause."""

    infrastructure: Count = Field(
        default=0,
        description="After a node was lost or a pod evicted, pre-empted or deleted; free.",
    )
    application: Count = Field(
        default=0, description="After the trainer failed; counted against runPolicy.backoffLimit."
    )
    hang: Count = Field(
        default=0,
        description="After training stopped making progress (a hang); counted against "
        "runPolicy.hangRestartLimit.",
    )


class ProgressStatus(StatusModel):
    """Training progress, reported by the trainer's rank 0."""

    step: Count | None = Field(default=None, description="Optimizer steps completed.")
    total_steps: Count | None = Field(default=None, description="Optimizer steps of the whole run.")
    epoch: float | None = Field(
        default=None, ge=0, description="Epochs completed, fractional, e.g. 1.25."
    )
    loss: float | None = Field(
        default=None, description="Training loss, averaged since the last report."
    )
    eval_loss: float | None = Field(
        default=None, description="Loss on the evaluation records, latest."
    )
    learning_rate: float | None = Field(default=None, ge=0, description="Current learning rate.")
    tokens_per_second: float | None = Field(
        default=None, ge=0, description="Training throughput over all GPUs, in tokens per second "
        "(text tasks)."
    )
    samples_per_second: float | None = Field(
        default=None, ge=0, description="Training throughput over all GPUs, in sequences or images "
        "per second."
    )
    eta_seconds: Count | None = Field(
        default=None, description="Estimated seconds until the last step completes."
    )
    updated_at: Timestamp | None = Field(
        default=None, description="When this progress was reported."
    )


class CheckpointRef(StatusModel):
    """A committed checkpoint."""

    step: Count = Field(description="Step the checkpoint was taken after.")
    uri: str = Field(max_length=2048, description="Folder of the checkpoint.")
    committed_at: Timestamp | None = Field(
        default=None, description="When its manifest was written."
    )


class CheckpointsStatus(StatusModel):
    """Checkpoints in checkpoint.uri."""

    latest: CheckpointRef | None = Field(
        default=None, description="The newest committed checkpoint."
    )
    committed: Count = Field(default=0, description="Committed checkpoints kept in storage.")
    resumed_from: CheckpointRef | None = Field(
        default=None,
        description="The committed checkpoint the latest attempt resumed from; unset while no "
        "attempt has resumed.",
    )


class MetricValue(StatusModel):
    """A metric's value at a step."""

    step: Count = Field(description="Optimizer steps completed when it was measured.")
    value: float = Field(description="The metric's value.")


class EvaluationRound(StatusModel):
    """The metrics of one evaluation."""

    step: Count = Field(description="Optimizer steps completed when it ran (0: the base model).")
    metrics: Annotated[dict[str, float], Field(max_length=32)] = Field(
        description="Every metric of the task by name, e.g. {eval_loss: 0.41, accuracy: 0.87, "
        "f1_macro: 0.86}; per-class figures and the confusion matrix are in metrics.jsonl."
    )


class EarlyStop(StatusModel):
    """Why training ended before its last step."""

    step: Count = Field(description="The step training stopped after.")
    message: str = Field(
        max_length=4096,
        description="The metric history that made it stop, e.g. \"f1_macro did not improve on "
        "0.871 (step 300) for 3 evaluations: 0.869 (400), 0.862 (500), 0.866 (600)\".",
    )


class EvaluationStatus(StatusModel):
    """How the model did on the evaluation records (the trainer)."""

    metric: str | None = Field(
        default=None, max_length=64, description="The metric that decides best (spec.evaluation.metric)."
    )
    best: MetricValue | None = Field(
        default=None, description="The best value of the metric so far, and its step."
    )
    latest: EvaluationRound | None = Field(default=None, description="The latest evaluation.")
    stopped_early: EarlyStop | None = Field(
        default=None, description="Set when early stopping ended training."
    )


class ParametersStatus(StatusModel):
    """Parameter counts of the model being trained (the trainer)."""

    trainable: Count | None = Field(default=None, description="Parameters that training updates.")
    total: Count | None = Field(default=None, description="All parameters of the model.")


class OutputStatus(StatusModel):
    """The fine-tuned model, once written."""

    uri: str | None = Field(
        default=None, max_length=2048, description="Folder holding the final model."
    )


class PreflightStatus(StatusModel):
    """What the preflight pod found (spec.preflight), before any worker pod."""

    result: Literal["Succeeded", "Failed"] | None = Field(
        default=None, description="Succeeded, or Failed (then the job failed with reason PreflightFailed)."
    )
    message: str | None = Field(
        default=None, max_length=4096, description="The problem it found, or a one-line summary."
    )
    records: Count | None = Field(default=None, description="Training records read.")
    eval_records: Count | None = Field(default=None, description="Evaluation records read.")
    sequences: Count | None = Field(
        default=None, description="Training sequences after tokenization (and packing)."
    )
    tokens: Count | None = Field(default=None, description="Training tokens after tokenization.")
    truncated: Count | None = Field(
        default=None, description="Training records longer than training.maxSeqLength, cut (without packing)."
    )
    dropped: Count | None = Field(
        default=None, description="Training sequences dropped for having no token to learn from."
    )
    labels: Annotated[dict[str, Count], Field(max_length=64)] | None = Field(
        default=None, description="Training records per label (classification; the first 64 labels)."
    )
    steps_per_epoch: Count | None = Field(default=None, description="Optimizer steps per epoch.")
    total_steps: Count | None = Field(default=None, description="Optimizer steps of the whole run.")
    memory_per_gpu: str | None = Field(
        default=None,
        max_length=512,
        description="Estimated memory each GPU needs, with its parts (parameters, gradients, "
        "optimizer state, activations).",
    )
    memory_per_gpu_bytes: Count | None = Field(
        default=None, description="The estimate in bytes."
    )
    gpu_memory_bytes: Count | None = Field(
        default=None,
        description="Memory of each GPU it was checked against (spec.resources.gpuMemory or the "
        "nodeSelector's nvidia.com/gpu.memory); unset: not checked.",
    )
    cache_uri: str | None = Field(
        default=None,
        max_length=2048,
        description="Folder of the tokenized data set the workers read; its name is the cache key, "
        "a hash of everything that determines it.",
    )
    cached: bool | None = Field(
        default=None,
        description="true: the cache already held this data set (tokenized by an earlier job), "
        "so nothing was tokenized.",
    )
    seconds: float | None = Field(default=None, ge=0, description="How long the preflight took.")
    completed_at: Timestamp | None = Field(
        default=None, description="When the operator recorded the verdict (the workers' start-up counts from it)."
    )

    @property
    def cache_key(self) -> str | None:
        """The tokenized data set's name in the cache (the last part of cache_uri)."""
        return self.cache_uri.rstrip("/").rsplit("/", 1)[-1] if self.cache_uri else None


class FineTuneJobStatus(StatusModel):
    """Observed state of a FineTuneJob."""

    observed_generation: Count | None = Field(
        default=None, description="metadata.generation of the spec the operator last acted on."
    )
    phase: Phase | None = Field(
        default=None,
        description="Pending, Running, Restarting, Suspended, Succeeded or Failed; the last two "
        "are final.",
    )
    conditions: Annotated[list[Condition], Field(max_length=32), ListMap("type")] | None = Field(
        default=None,
        description="Ready, Reconciling and Stalled (kstatus), and Succeeded or Failed at the "
        "end; wait with `kubectl wait --for=condition=Succeeded ftj/NAME`.",
    )
    start_time: Timestamp | None = Field(
        default=None, description="When the operator first started it."
    )
    completion_time: Timestamp | None = Field(
        default=None, description="When it reached Succeeded or Failed."
    )
    workers: WorkersStatus | None = Field(
        default=None, description="Worker pods of the current attempt."
    )
    restarts: RestartsStatus | None = Field(
        default=None, description="Gang restarts so far, by cause."
    )
    progress: ProgressStatus | None = Field(
        default=None, description="Training progress (the trainer)."
    )
    progress_text: str | None = Field(
        default=None,
        max_length=64,
        description='Progress as "step/totalSteps" for `kubectl get`, written with progress.',
    )
    checkpoints: CheckpointsStatus | None = Field(
        default=None, description="Committed checkpoints."
    )
    evaluation: EvaluationStatus | None = Field(
        default=None, description="Evaluation metrics: the best and the latest (the trainer)."
    )
    parameters: ParametersStatus | None = Field(
        default=None, description="Trainable and total parameters (the trainer)."
    )
    output: OutputStatus | None = Field(
        default=None, description="The fine-tuned model, once written."
    )
    preflight: PreflightStatus | None = Field(
        default=None, description="What the preflight found (spec.preflight)."
    )
    message: str | None = Field(
        default=None, max_length=32768, description="Human-readable summary of the last transition."
    )

    def condition(self, type_: str) -> Condition | None:
        """The condition of that type, if present."""
        return next((c for c in self.conditions or () if c.type == type_), None)

    @property
    def is_terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


def progress_text(step: int, total_steps: int | None) -> str:
    """The printer column's text: "1200/3000", or "1200" while the total is unknown."""
    return f"{step}/{total_steps}" if total_steps else str(step)
