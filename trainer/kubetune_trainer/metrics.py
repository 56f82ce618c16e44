"""Evaluation metrics from the counts every rank adds up: pure functions, scikit-learn's formulas.

An evaluation sums a few numbers over its batches (losses, correct tokens, a
confusion matrix), all-reduces them across ranks once, and turns the totals
into the task's metrics here. A confusion matrix is a complete record of the
(true, predicted) pairs, so the classification metrics computed from it equal
scikit-learn's over the concatenated predictions of every rank exactly, however
the evaluation records were split into shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    """One evaluation's metrics."""

    step: int
    """Optimizer steps completed when it ran (0: the base model)."""
    metrics: dict[str, float]
    """Every metric of the task by name (the names of kubetune_api.evaluation)."""
    details: dict[str, Any] = field(default_factory=dict)
    """What does not fit a status: per-class figures and the confusion matrix."""


def language_model_metrics(loss_sum: float, correct: float, tokens: float) -> dict[str, float]:
    """eval_loss (mean per-token cross-entropy), perplexity and token_accuracy over `tokens`
    trained-on tokens."""
    tokens = max(tokens, 1.0)
    loss = loss_sum / tokens
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 700.0)), "token_accuracy": correct / tokens}


def predictions_of(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) with each (true, predicted) pair as often as the matrix counts it."""
    counts = np.asarray(confusion, dtype=np.int64)
    true, predicted = np.nonzero(counts)
    repeats = counts[true, predicted]
    return np.repeat(true, repeats), np.repeat(predicted, repeats)


def classification_metrics(loss_sum: float, confusion: np.ndarray,
                           labels: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """(summary metrics, details) from the summed loss and the confusion matrix (rows: true
    labels, columns: predicted)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    y_true, y_pred = predictions_of(confusion)
    ids = list(range(len(labels)))
    summary = {"eval_loss": loss_sum / max(len(y_true), 1), "accuracy": float(accuracy_score(y_true, y_pred))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=ids, average=average, zero_division=0)
        summary |= {f"precision_{average}": float(precision), f"recall_{average}": float(recall),
                    f"f1_{average}": float(f1)}
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, average=None, zero_division=0)
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(support[i])} for i, name in enumerate(labels)}
    details = {"labels": list(labels), "confusion_matrix": np.asarray(confusion, dtype=np.int64).tolist(),
               "per_class": per_class}
    return summary, details
