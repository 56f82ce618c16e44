"""Evaluation: the metrics, computed exactly once per sample across ranks; the best step and
early stopping; retention that keeps the best checkpoint.

The distributed test runs evaluate() in two real processes joined by
torch.distributed over gloo, on an evaluation set that does not divide evenly
between them, and compares with scikit-learn over one process's predictions.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch

from kubetune_trainer.manifest import listing, retention_plan
from kubetune_trainer.metrics import classification_metrics, language_model_metrics, predictions_of
from kubetune_trainer.selection import MetricTracker

LABELS = ["negative", "neutral", "positive"]


def sklearn_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    out = {"accuracy": accuracy_score(y_true, y_pred)}
    for average in ("macro", "weighted"):
        kw: dict[str, Any] = {"labels": [0, 1, 2], "average": average, "zero_division": 0}
        out |= {f"precision_{average}": precision_score(y_true, y_pred, **kw),
                f"recall_{average}": recall_score(y_true, y_pred, **kw), f"f1_{average}": f1_score(y_true, y_pred, **kw)}
    return {k: float(v) for k, v in out.items()}


def test_metrics_from_a_confusion_matrix_equal_scikit_learns_over_the_predictions() -> None:
    rng = np.random.default_rng(7)
    y_true, y_pred = rng.integers(0, 3, 101), rng.integers(0, 3, 101)
    y_pred[:60] = y_true[:60]  # better than chance
    confusion = np.zeros((3, 3), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    true_back, pred_back = predictions_of(confusion)
    assert sorted(zip(true_back, pred_back, strict=True)) == sorted(zip(y_true, y_pred, strict=True))
    summary, details = classification_metrics(50.5, confusion, LABELS)
    expected = sklearn_metrics(y_true, y_pred)
    assert {k: summary[k] for k in expected} == expected
    assert summary["eval_loss"] == pytest.approx(0.5)
    assert details["confusion_matrix"] == confusion.tolist()
    assert set(details["per_class"]) == set(LABELS)
    assert sum(c["support"] for c in details["per_class"].values()) == 101


def test_language_model_metrics() -> None:
    metrics = language_model_metrics(loss_sum=20.0, correct=30, tokens=40)
    assert metrics == {"eval_loss": 0.5, "perplexity": pytest.approx(np.exp(0.5)), "token_accuracy": 0.75}


# --- the same numbers on two ranks as on one


class Classifier(torch.nn.Module):
    """A fixed random linear classifier over 5 features, standing in for a model's forward pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.linear = torch.nn.Linear(5, 3)
        self.device = torch.device("cpu")

    def forward(self, features: torch.Tensor) -> Any:
        return type("Output", (), {"logits": self.linear(features)})()


def dataset() -> tuple[list[tuple[list[float], int]], Any]:
    rng = np.random.default_rng(11)
    samples = [(rng.normal(size=5).tolist(), int(rng.integers(0, 3))) for _ in range(37)]  # 37 = 19 + 18

    def collate(batch: list[tuple[list[float], int]], training: bool) -> dict[str, torch.Tensor]:
        return {"features": torch.tensor([f for f, _ in batch]), "labels": torch.tensor([y for _, y in batch])}

    return samples, collate


def _rank(rank: int, port: int, results: Any) -> None:
    import torch.distributed as dist

    from kubetune_trainer.distributed import DistEnv
    from kubetune_trainer.evaluate import evaluate

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        samples, collate = dataset()
        evaluation = evaluate(Classifier(), samples, collate, step=5, task="sequence-classification",
                              labels=LABELS, micro_batch_size=4, env=DistEnv(rank, rank, 2))
        results[rank] = (evaluation.metrics, evaluation.details["confusion_matrix"])
    finally:
        dist.destroy_process_group()


def test_two_ranks_report_exactly_what_one_process_computes_over_all_predictions() -> None:
    from kubetune_testbed.ports import free_port

    manager = torch.multiprocessing.Manager()
    results = manager.dict()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.multiprocessing.spawn(_rank, args=(free_port(), results), nprocs=2, join=True)
    (metrics0, confusion0), (metrics1, confusion1) = results[0], results[1]
    assert metrics0 == metrics1 and confusion0 == confusion1  # every rank decides alike

    samples, _ = dataset()
    with torch.no_grad():
        logits = Classifier()(torch.tensor([f for f, _ in samples])).logits
    y_true, y_pred = np.array([y for _, y in samples]), logits.argmax(-1).numpy()
    assert int(np.sum(confusion0)) == len(samples)  # no sample dropped or counted twice
    expected = sklearn_metrics(y_true, y_pred)
    assert {k: metrics0[k] for k in expected} == expected
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y_true), reduction="mean").item()
    assert metrics0["eval_loss"] == pytest.approx(loss, rel=1e-6)


# --- the best step and early stopping


def test_the_tracker_keeps_the_best_and_stops_after_patience() -> None:
    tracker = MetricTracker("f1_macro", patience=2, min_delta=0.01)
    assert tracker.observe(100, {"f1_macro": 0.50}) and tracker.best_step == 100
    assert tracker.observe(200, {"f1_macro": 0.505}) and tracker.best_step == 200  # better, but not by minDelta
    assert tracker.stale == 1 and not tracker.should_stop
    assert not tracker.observe(300, {"f1_macro": 0.49})
    assert tracker.should_stop and tracker.best_value == 0.505
    assert tracker.stop_message() == ("f1_macro did not improve on 0.505 (step 200) by more than 0.01 for 2 "
                                      "evaluations: 0.505 (200), 0.49 (300)")
    again = MetricTracker.from_state(tracker.state(), patience=2, min_delta=0.01)
    assert again == tracker  # a checkpoint keeps it


def test_losses_are_better_lower() -> None:
    tracker = MetricTracker("eval_loss")
    tracker.observe(1, {"eval_loss": 2.0})
    assert tracker.observe(2, {"eval_loss": 1.5}) and not tracker.observe(3, {"eval_loss": 1.7})
    assert (tracker.best_step, tracker.should_stop) == (2, False)  # no patience: never stops


def test_retention_keeps_the_best_checkpoint_beside_the_newest() -> None:
    found = listing([f"step-{s:08d}/{name}" for s in (100, 200, 300, 400) for name in ("a.pt", "manifest.json")]
                    + ["step-00000500/a.pt", "metrics.jsonl"])
    assert retention_plan(found, keep_last=1, best=200) == ([100, 300], [])
    assert retention_plan(found, keep_last=2, best=None) == ([100, 200], [])
