"""Mistakes in a FineTuneSweep, each with the field it is reported on and words of the message:
the parse step (test_sweep_spec.py) and the API server (test_sweep_admission.py) must both name it."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kubetune_testbed import REPO

EXAMPLE = REPO / "examples" / "sweep-lora-lr.yaml"


def example_sweep() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))


MISTAKES: list[tuple[Any, str, str]] = [
    (lambda s: s["parameters"].__setitem__(0, {"path": "training.learningrate", "values": [1e-3]}),
     "spec.parameters[0].path", "did you mean training.learningRate"),
    (lambda s: s["parameters"].__setitem__(0, {"path": "training.learningRate", "values": ["fast"]}),
     "spec.parameters[0].values[0]", "must be a number"),
    (lambda s: s["parameters"].__setitem__(1, {"path": "method.lora.r", "values": [8.5]}),
     "spec.parameters[1].values", "whole numbers for method.lora.r"),
    (lambda s: s["parameters"].__setitem__(1, {"path": "training.lrScheduler", "values": [1]}),
     "spec.parameters[1].path", "training.lrScheduler is a string field: give its values as strings"),
    (lambda s: (s["parameters"].__setitem__(0, {"path": "training.learningRate",
                                                "range": {"min": 1e-3, "max": 1e-4}}),
                s["algorithm"].update(type="random"), s.update(maxTrials=4)),
     "spec.parameters[0].range.max", "must be greater than min"),
    (lambda s: s.update(parallelism=0), "spec.parallelism", "must be >= 1"),
    (lambda s: s["parameters"].__setitem__(0, {"path": "training.learningRate", "range": {"min": 1e-4, "max": 1e-3}}),
     "spec.parameters", "a grid sweep takes values or intRange"),
    (lambda s: s["algorithm"].update(type="tpe"), "spec.maxTrials", "random and tpe sweeps need maxTrials"),
    (lambda s: s["parameters"].__setitem__(0, {"path": "training.learningRate", "values": [1e-3],
                                               "intRange": {"min": 1, "max": 2}}),
     "spec.parameters[0].values", "set exactly one of"),
    (lambda s: s["parameters"].__setitem__(0, {"path": "training.learningRate", "values": [-1.0]}),
     "spec.parameters[0]", "value -1.0 makes an invalid trial: spec.template.training.learningRate must be > 0"),
    (lambda s: (s["template"]["dataset"].pop("eval"), s["template"]["training"].pop("evalEverySteps")),
     "spec.template.dataset", "needs evaluation records"),
]
IDS = ["unknown-path", "string-for-number", "fraction-for-integer", "number-for-string", "min-above-max",
       "parallelism-0", "grid-range", "tpe-without-maxTrials", "two-kinds-of-values", "out-of-bounds-value",
       "no-eval"]
