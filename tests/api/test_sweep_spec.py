"""The FineTuneSweep spec as the operator parses it: the example, mistakes named by field, and
the trial specs it makes (plain data; tests/api/test_sweep_admission.py checks the same mistakes at
the API server)."""

from __future__ import annotations

from typing import Any

import pytest
from sweep_cases import IDS, MISTAKES, example_sweep

from kubetune_api import SpecError
from kubetune_api.sweep import SWEEPABLE, parse_sweep_spec, trial_spec


def example() -> dict[str, Any]:
    return example_sweep()["spec"]


def errors(spec: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as e:
        parse_sweep_spec(spec)
    return str(e.value)


def test_the_example_is_a_grid_of_six_trials_ranked_by_eval_loss() -> None:
    spec = parse_sweep_spec(example())
    assert spec.algorithm.type == "grid" and spec.trial_limit == spec.grid_size == 6
    assert spec.metric == "eval_loss" and not spec.maximize
    points = [spec.grid_point(n) for n in range(6)]
    assert points[0] == {"training.learningRate": 3e-4, "method.lora.r": 8}
    assert points[5] == {"training.learningRate": 3e-3, "method.lora.r": 16}
    assert len({tuple(p.items()) for p in points}) == 6
    assert all(type(p["method.lora.r"]) is int for p in points)  # an integer field gets integers


def test_a_trial_spec_is_the_template_with_its_parameters_and_its_own_folders() -> None:
    spec = parse_sweep_spec(example())
    trial = trial_spec(spec.template, "sweep-lora-lr-3", spec.grid_point(3))
    assert trial.training.learning_rate == 1e-3 and trial.method.lora is not None and trial.method.lora.r == 16
    assert trial.output.uri == "s3://kubetune-demo/output/sweep-lora-lr/trials/sweep-lora-lr-3/"
    assert trial.checkpoint_uri == "s3://kubetune-demo/output/sweep-lora-lr/trials/sweep-lora-lr-3/checkpoints/"


def test_sweepable_paths_are_the_scalar_fields_but_where_things_go_and_how_they_run() -> None:
    assert SWEEPABLE["training.learningRate"] == "number"
    assert SWEEPABLE["method.lora.r"] == "integer"
    assert SWEEPABLE["training.lrScheduler"] == "string"
    assert SWEEPABLE["method.gradientCheckpointing"] == "boolean"
    assert not any(p.startswith(("runPolicy.", "output.", "checkpoint.", "storage.")) for p in SWEEPABLE)
    assert "method.lora.targetModules" not in SWEEPABLE  # a list, not a scalar


@pytest.mark.parametrize(("change", "field", "words"), MISTAKES, ids=IDS)
def test_mistakes_are_named_by_field(change: Any, field: str, words: str) -> None:
    spec = example()
    change(spec)
    text = errors(spec)
    assert text.startswith("invalid FineTuneSweep spec")
    assert f"{field} " in text and words in text, text
