"""The FineTuneJob CustomResourceDefinition, generated from the models.

pydantic writes a JSON Schema of the spec and status models; this module turns
it into the structural OpenAPI v3 schema the API server wants (no $ref, no
nullable unions, defaults, CEL rules from each model's RULES, immutability
rules for every spec field but the mutable ones) and wraps it in the CRD with
names, printer columns and the status subresource. `hack/gen_api.py` writes
the result to crds/; a test fails when the committed file differs.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from . import constants as c
from .spec import FineTuneJobSpec
from .status import FineTuneJobStatus

# Key order in the generated YAML, for a diff-friendly and readable file.
_KEY_ORDER = [
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "maxProperties",
    "anyOf",
    "items",
    "additionalProperties",
    "properties",
    "required",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
]
_DROPPED = {"title", "examples"}
_RULE_KEY_ORDER = ["rule", "messageExpression", "message", "fieldPath", "reason"]

IMMUTABLE_MESSAGE = (
    "is immutable after creation; to change it, delete the job and create it anew "
    "(only spec.runPolicy may change)"
)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline $ref, allOf-of-one and Optional (anyOf with null); the referring
    site's keys (description, default, rules) win over the target's."""
    node = dict(node)
    if "$ref" in node:
        target = _resolve(defs[node.pop("$ref").rsplit("/", 1)[-1]], defs)
        return _merge(target, node)
    if "allOf" in node and len(node["allOf"]) == 1:
        return _merge(_resolve(node.pop("allOf")[0], defs), node)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"a union cannot be expressed in a structural schema: {branches}")
        if node.get("default", 0) is None:
            del node["default"]
        return _merge(_resolve(branches[0], defs), node)
    return node


def _merge(target: dict[str, Any], site: dict[str, Any]) -> dict[str, Any]:
    merged = {**target, **site}
    rules = target.get("x-kubernetes-validations", []) + site.get("x-kubernetes-validations", [])
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _default_text(value: Any) -> str | None:
    if isinstance(value, dict | list):
        return None
    return f" Default: {json.dumps(value)}."


def structural(node: dict[str, Any], defs: dict[str, Any], *, defaults: bool) -> dict[str, Any]:
    """One node of pydantic's JSON Schema as a structural OpenAPI v3 node."""
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or key == "$defs":
            continue
        if key == "properties":
            out[key] = {
                name: structural(prop, defs, defaults=defaults) for name, prop in value.items()
            }
        elif key == "items":
            out[key] = structural(value, defs, defaults=defaults)
        elif key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out[key] = structural(value, defs, defaults=defaults)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020-12 form -> OpenAPI v3.0 form.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        elif key == "default":
            if defaults:
                out[key] = value
        elif key == "x-kubernetes-validations":
            out[key] = [{k: r[k] for k in _RULE_KEY_ORDER if k in r} for r in value]
        else:
            out[key] = value
    if "default" in out and "description" in out:
        suffix = _default_text(out["default"])
        if suffix:
            out["description"] = out["description"].rstrip() + suffix
    return {k: out[k] for k in sorted(out, key=_KEY_ORDER.index)}


def _immutability_rules(schema: dict[str, Any], mutable: frozenset[str], message: str) -> list[dict[str, str]]:
    always_present = set(schema.get("required", []))
    always_present |= {n for n, p in schema["properties"].items() if "default" in p}
    rules = []
    for name in schema["properties"]:
        if name in mutable:
            continue
        if name in always_present:
            rule = f"self.{name} == oldSelf.{name}"
        else:
            rule = (
                f"has(self.{name}) == has(oldSelf.{name}) && "
                f"(!has(self.{name}) || self.{name} == oldSelf.{name})"
            )
        rules.append(
            {
                "rule": rule,
                "message": message,
                "fieldPath": f".{name}",
                "reason": "FieldValueForbidden",
            }
        )
    return rules


def spec_schema(model: Any = FineTuneJobSpec, message: str = IMMUTABLE_MESSAGE) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = structural(raw, raw.get("$defs", {}), defaults=True)
    schema["x-kubernetes-validations"] = schema.get("x-kubernetes-validations", []) + (
        _immutability_rules(schema, model.MUTABLE_FIELDS, message)
    )
    return schema


def status_schema(model: Any = FineTuneJobStatus) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}), defaults=False)


_NAME_RULES = [
    {
        "rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "message": "must start with a letter and hold only lowercase letters, "
        "digits and '-' (an RFC 1035 label): it names the job's Service",
        "fieldPath": ".metadata.name",
        "reason": "FieldValueInvalid",
    },
]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
     "description": "Pending, Running, Restarting, Suspended, Succeeded or Failed"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progressText",
     "description": "Optimizer steps done / total"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss",
     "description": "Latest training loss"},
    {"name": "Best", "type": "number", "jsonPath": ".status.evaluation.best.value",
     "description": "Best value of the evaluation metric"},
    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.resources.nodes",
     "description": "Worker pods (one per machine)"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Method", "type": "string", "jsonPath": ".spec.method.type", "priority": 1,
     "description": "full or lora"},
    {"name": "Metric", "type": "string", "jsonPath": ".status.evaluation.metric", "priority": 1,
     "description": "The metric Best is measured in"},
    {"name": "GPUs/Node", "type": "integer", "jsonPath": ".spec.resources.gpusPerNode",
     "priority": 1, "description": "GPUs per worker pod"},
    {"name": "Checkpoint", "type": "integer", "jsonPath": ".status.checkpoints.latest.step",
     "priority": 1, "description": "Step of the newest committed checkpoint"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1,
     "description": "Summary of the last transition"},
]  # fmt: skip


def _object_schema(description: str, kind: str, name_length: int, spec: dict[str, Any],
                   status: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": f"{c.API_VERSION}",
                "type": "string",
            },
            "kind": {"description": kind, "type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": name_length},
                },
            },
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
        "x-kubernetes-validations": _NAME_RULES,
    }


def openapi_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the FineTuneJob kind."""
    return _object_schema(
        "FineTuneJob fine-tunes a pretrained language model with DeepSpeed on "
        "one or more GPU pods, streams checkpoints to storage so it can resume, and writes the "
        "fine-tuned model to output.uri.",
        c.KIND, c.MAX_JOB_NAME_LENGTH, spec_schema(), status_schema(),
    )


def _crd(name: str, names: dict[str, Any], columns: list[dict[str, Any]], schema: dict[str, Any],
         selectable: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": c.GROUP,
            "names": names,
            "scope": "Namespaced",
            "versions": [
                {
                    "name": c.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "selectableFields": [{"jsonPath": p} for p in selectable],
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition, as a dict ready for YAML or the API."""
    names = {
        "kind": c.KIND,
        "listKind": c.LIST_KIND,
        "plural": c.PLURAL,
        "singular": c.SINGULAR,
        "shortNames": list(c.SHORT_NAMES),
        "categories": list(c.CATEGORIES),
    }
    return _crd(c.CRD_NAME, names, PRINTER_COLUMNS, openapi_schema(), [".spec.method.type", ".status.phase"])


SWEEP_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
     "description": "Pending, Running, Suspended, Succeeded or Failed"},
    {"name": "Trials", "type": "string", "jsonPath": ".status.trialsText",
     "description": "Trials finished / trials the sweep runs"},
    {"name": "Best", "type": "number", "jsonPath": ".status.best.value",
     "description": "Best value of the objective metric"},
    {"name": "Best Trial", "type": "string", "jsonPath": ".status.best.name",
     "description": "The trial with that value"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Metric", "type": "string", "jsonPath": ".status.metric", "priority": 1,
     "description": "The objective metric"},
    {"name": "Algorithm", "type": "string", "jsonPath": ".spec.algorithm.type", "priority": 1,
     "description": "grid, random or tpe"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1,
     "description": "Summary of the last transition"},
]  # fmt: skip

SWEEP_IMMUTABLE_MESSAGE = (
    "is immutable after creation; to change it, delete the sweep and create it anew "
    "(only spec.suspend, spec.parallelism and spec.maxTrials may change)"
)


def build_sweep_crd() -> dict[str, Any]:
    """The FineTuneSweep CustomResourceDefinition."""
    from . import sweep as s

    names = {
        "kind": s.SWEEP_KIND,
        "listKind": s.SWEEP_LIST_KIND,
        "plural": s.SWEEP_PLURAL,
        "singular": s.SWEEP_SINGULAR,
        "shortNames": list(s.SWEEP_SHORT_NAMES),
        "categories": list(c.CATEGORIES),
    }
    schema = _object_schema(
        "FineTuneSweep searches hyperparameters: it runs trial FineTuneJobs from spec.template with "
        "the parameters its algorithm picks, stops trials that fall behind, ranks them by an "
        "evaluation metric and promotes the best trial's model.",
        s.SWEEP_KIND, s.MAX_SWEEP_NAME_LENGTH,
        spec_schema(s.FineTuneSweepSpec, SWEEP_IMMUTABLE_MESSAGE), status_schema(s.FineTuneSweepStatus),
    )
    return _crd(s.SWEEP_CRD_NAME, names, SWEEP_PRINTER_COLUMNS, schema, [".status.phase"])


class _Dumper(yaml.SafeDumper):
    """Plain YAML without anchors and aliases, which kubectl and people read badly."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


CRD_HEADER = (
    "# Generated by hack/gen_api.py from api/kubetune_api (the pydantic models): do not edit.\n"
    "# Regenerate with `make crds`.\n"
)


def render_crd(crd: dict[str, Any] | None = None) -> str:
    """A CRD (the FineTuneJob's unless given) as the YAML text committed in crds/."""
    return CRD_HEADER + yaml.dump(crd or build_crd(), Dumper=_Dumper, sort_keys=False, width=100)
