"""What a job is trained for and how its result is judged: the task, the metric that decides
"best", and early stopping.

Part of the FineTuneJob spec (see spec.py). The metric names here are the keys
the trainer reports in status.evaluation and in metrics.jsonl, so a spec, a
status and a metrics file always speak of the same numbers.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from .base import ApiModel

Task = Literal["causal-lm", "sequence-classification", "image-classification"]

CAUSAL_LM_METRICS: Final = ("eval_loss", "perplexity", "token_accuracy")
CLASSIFICATION_METRICS: Final = (
    "eval_loss",
    "accuracy",
    "f1_macro",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
    "precision_weighted",
    "recall_weighted",
)
METRICS: Final = tuple(dict.fromkeys(CAUSAL_LM_METRICS + CLASSIFICATION_METRICS))
# Every other metric is better when higher.
LOWER_IS_BETTER: Final = frozenset({"eval_loss", "perplexity"})

MetricName = Literal[
    "eval_loss",
    "perplexity",
    "token_accuracy",
    "accuracy",
    "f1_macro",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
    "precision_weighted",
    "recall_weighted",
]


def task_metrics(task: Task) -> tuple[str, ...]:
    """The metrics the trainer computes for `task`."""
    return CAUSAL_LM_METRICS if task == "causal-lm" else CLASSIFICATION_METRICS


def default_metric(task: Task) -> str:
    return "eval_loss" if task == "causal-lm" else "f1_macro"


def improves(metric: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `best` by more than `min_delta` (in the metric's own direction)."""
    if best is None:
        return True
    if metric in LOWER_IS_BETTER:
        return value < best - min_delta
    return value > best + min_delta


class EarlyStoppingSpec(ApiModel):
    """Stop training when the metric stops improving."""

    patience: int = Field(
        ge=1,
        le=10000,
        description="Evaluations in a row without improvement (by more than minDelta) after which "
        "training stops, commits its last checkpoint and publishes the output. Required.",
    )
    min_delta: float = Field(
        default=0.0,
        ge=0,
        le=1_000_000,
        description="Smallest change of the metric that counts as an improvement, in the metric's "
        "unit (e.g. 0.001 for accuracy).",
    )


class EvaluationSpec(ApiModel):
    """How the fine-tuned model is judged on the evaluation records."""

    metric: MetricName | None = Field(
        default=None,
        description="The metric that decides which checkpoint is best, and early stopping: "
        "eval_loss, perplexity or token_accuracy for task causal-lm; eval_loss, accuracy, "
        "f1_macro, f1_weighted, precision_macro, recall_macro, precision_weighted or "
        "recall_weighted for the classification tasks. Losses and perplexity are better lower, "
        "the others higher. Unset: eval_loss for causal-lm, f1_macro for classification.",
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        default=None,
        description="Stop when the metric has not improved for `patience` evaluations. Needs "
        "evaluation records (dataset.eval or dataset.evalSplit). Unset: train to the end.",
    )

    def metric_for(self, task: Task) -> str:
        """The metric in force for `task`."""
        return self.metric or default_metric(task)
