"""Property-based tests of the parse step against the CRD's schema.

Whatever the CRD's schema admits, parse_spec accepts, or rejects only for a
rule across fields (which the API server checks with CEL), always naming a
field; whatever JSON it is given, it raises SpecError and nothing else.
"""

from __future__ import annotations

import copy
from typing import Any

from ftj_schema_strategy import admitted, has_field, json_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune_api import SpecError, kube, parse_spec, task_metrics
from kubetune_api import spec as spec_models
from kubetune_api.base import ApiModel
from kubetune_api.crd import spec_schema

SPEC_SCHEMA = spec_schema()
ROOT = {"type": "object", "properties": {"spec": SPEC_SCHEMA}}

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _rule_messages() -> set[str]:
    models: list[type[ApiModel]] = [
        obj
        for module in (spec_models, kube)
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, ApiModel)
    ]
    return {rule.message for model in models for rule in model.RULES}


RULE_MESSAGES = _rule_messages()
# A rule with an `explain` names the values in the parse step: its message begins the same way.
RULE_STEMS = tuple(m.split(":")[0].split(" (")[0] for m in RULE_MESSAGES)


def _is_rule_message(message: str) -> bool:
    text = message.removeprefix("is required: ")
    return text in RULE_MESSAGES or text.startswith(("must be a multiple of microBatchSize", *RULE_STEMS))


def _check_errors_name_fields(error: SpecError) -> None:
    assert error.errors, "a SpecError lists at least one problem"
    for problem in error.errors:
        assert problem.path == "spec" or problem.path.startswith(("spec.", "spec[")), problem
        assert problem.message, problem
        if "is not a field of" in problem.message:
            parent = problem.message.split("is not a field of ", 1)[1].split(";", 1)[0]
            assert problem.path.startswith(parent), problem
            assert has_field(ROOT, parent), problem
        else:
            assert has_field(ROOT, problem.path), problem


@PROPERTY_SETTINGS
@given(admitted(SPEC_SCHEMA))
def test_what_the_schema_admits_parses_or_breaks_only_a_cross_field_rule(spec: Any) -> None:
    try:
        parsed = parse_spec(spec)
    except SpecError as error:
        _check_errors_name_fields(error)
        per_field = [str(e) for e in error.errors if not _is_rule_message(e.message)]
        assert not per_field, f"the CRD admits what the model rejects: {per_field}"
    else:
        assert parse_spec(parsed.to_manifest()) == parsed


def _obey_cross_field_rules(spec: dict[str, Any]) -> dict[str, Any]:
    """The smallest edits that make an admitted spec obey every rule across fields."""
    spec = copy.deepcopy(spec)
    training, dataset = spec["training"], spec["dataset"]
    if "maxSteps" in training:
        training.pop("epochs", None)
        if training.get("warmupSteps", 0) >= training["maxSteps"]:
            training.pop("warmupSteps")
    else:
        training.setdefault("epochs", 1)
    if "warmupSteps" in training:
        training.pop("warmupRatio", None)
    training.pop("globalBatchSize", None)
    if dataset.get("eval"):
        dataset.pop("evalSplit", None)
    keys = {"text": {"text"}, "prompt-completion": {"prompt", "completion"}, "chat": {"messages"},
            "classification": {"text", "textPair", "label"}, "image-classification": {"image", "label"}}
    if "fields" in dataset:
        dataset["fields"] = {
            k: v for k, v in dataset["fields"].items() if k in keys[dataset["format"]]
        }
    task = {"classification": "sequence-classification", "image-classification": "image-classification"}
    spec["task"] = task.get(dataset["format"], "causal-lm")
    if spec["task"] == "causal-lm":
        dataset.pop("labels", None)
    if dataset["format"] != "image-classification":
        dataset["augment"] = False
    evaluation = spec.setdefault("evaluation", {})
    if evaluation.get("metric") not in task_metrics(spec["task"]):
        evaluation.pop("metric", None)
    if not dataset.get("eval") and "evalSplit" not in dataset:
        training.pop("evalEverySteps", None)
        evaluation.pop("earlyStopping", None)
        spec["output"].pop("select", None)
    method = spec.setdefault("method", {})
    if method.get("type", "full") != "lora":
        method.pop("lora", None)
        spec["output"]["mergeLora"] = False
    else:
        method.pop("freeze", None)
    deepspeed = spec.setdefault("deepspeed", {})
    deepspeed["offload"] = "none"
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
    ):
        deepspeed.get("config", {}).pop(key, None)
    for resources_map in ("requests", "limits"):
        spec.get("resources", {}).get(resources_map, {}).pop("nvidia.com/gpu", None)
    for env in spec.get("env", []):
        if "value" in env:
            env.pop("valueFrom", None)
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            source.pop("secretRef", None)
        else:
            source.setdefault("secretRef", {"name": "s"})
    spec.pop("volumeMounts", None)
    # Keys of pod labels and annotations: the rule's format, and none of the operator's label keys.
    pod = spec.get("podMetadata", {})
    for kind in ("labels", "annotations"):
        if kind in pod:
            pod[kind] = {f"k{i}": v for i, v in enumerate(pod[kind].values())}
    return spec


@PROPERTY_SETTINGS
@given(admitted(SPEC_SCHEMA).map(_obey_cross_field_rules))
def test_what_obeys_schema_and_rules_is_accepted(spec: Any) -> None:
    parsed = parse_spec(spec)
    assert parse_spec(parsed.to_manifest()) == parsed


@st.composite
def _damaged_specs(draw: st.DrawFn) -> Any:
    """A schema-admitted spec with one value replaced, removed, or added at random."""
    spec = copy.deepcopy(draw(admitted(SPEC_SCHEMA)))
    node: Any = spec
    for _ in range(draw(st.integers(0, 4))):
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict | list) or not node[key]:
                break
            node = node[key]
        elif isinstance(node, list) and node:
            node = node[draw(st.integers(0, len(node) - 1))]
        else:
            break
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if isinstance(node, dict):
        if action == "add" or not node:
            node[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
        else:
            key = draw(st.sampled_from(sorted(node)))
            if action == "remove":
                del node[key]
            else:
                node[key] = draw(json_values)
    elif isinstance(node, list) and node:
        node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
    return spec


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(_damaged_specs())
def test_damaged_specs_are_rejected_with_named_fields_or_accepted(spec: Any) -> None:
    try:
        parse_spec(spec)
    except SpecError as error:
        _check_errors_name_fields(error)


@PROPERTY_SETTINGS
@given(json_values)
def test_any_json_raises_only_spec_error(value: Any) -> None:
    try:
        parse_spec(value)
    except SpecError as error:
        _check_errors_name_fields(error)
