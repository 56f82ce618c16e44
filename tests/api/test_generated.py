"""The committed CRD and API reference are exactly what the models generate, and
the CRD has the shape the API server and `kubectl` users rely on."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from ftj_cases import CRD_FILE, REPO

from kubetune_api import FineTuneJobSpec
from kubetune_api.crd import build_crd, openapi_schema, render_crd
from kubetune_api.reference import render_reference

DOCS_FILE = REPO / "docs" / "api.md"


def test_committed_crd_is_generated_from_the_model() -> None:
    assert CRD_FILE.read_text() == render_crd(), "crds/ is stale: run `make crds`"


def test_committed_api_reference_is_generated_from_the_model() -> None:
    assert DOCS_FILE.read_text() == render_reference(), "docs/api.md is stale: run `make crds`"


def test_generator_check_mode_passes() -> None:
    result = subprocess.run(
        [sys.executable, "hack/gen_api.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_committed_crd_is_the_yaml_of_build_crd() -> None:
    assert yaml.safe_load(CRD_FILE.read_text()) == build_crd()


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from _nodes(node["items"], path + "[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], path + "[*]")


def _fields(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Only the named fields (properties), not list items or map values themselves."""
    for sub_path, sub in _nodes(node, path):
        if sub_path != path and not sub_path.endswith(("[]", "[*]")):
            yield sub_path, sub


SCHEMA = openapi_schema()


def test_schema_is_structural() -> None:
    for path, node in _nodes(SCHEMA):
        assert "$ref" not in node and "allOf" not in node and "oneOf" not in node, path
        assert "nullable" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "anyOf" not in node, path
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path


def test_every_spec_and_status_field_is_described() -> None:
    for root in ("spec", "status"):
        for path, node in _fields(SCHEMA["properties"][root], root):
            assert node.get("description", "").strip(), f"{path} has no description"


def test_descriptions_state_defaults() -> None:
    for path, node in _nodes(SCHEMA["properties"]["spec"], "spec"):
        if "default" in node and not isinstance(node["default"], dict):
            assert "Default: " in node["description"], path


def test_optional_fields_without_default_say_what_unset_means() -> None:
    for path, node in _nodes(SCHEMA["properties"]["spec"], "spec"):
        for name, child in node.get("properties", {}).items():
            if name in node.get("required", []) or "default" in child:
                continue
            text = child.get("description", "")
            assert "Unset" in text or "exactly one of" in text or "Set from" in text, (
                f"{path}.{name}: say what leaving it out means"
            )


def test_strings_lists_and_maps_are_bounded_for_cel() -> None:
    # The API server estimates each CEL rule's cost from these bounds.
    for path, node in _nodes(SCHEMA["properties"]["spec"], "spec"):
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, path


def test_every_spec_field_but_run_policy_is_immutable() -> None:
    spec = SCHEMA["properties"]["spec"]
    guarded = {
        r["fieldPath"].lstrip(".")
        for r in spec["x-kubernetes-validations"]
        if "oldSelf" in r["rule"]
    }
    assert guarded == set(spec["properties"]) - FineTuneJobSpec.MUTABLE_FIELDS
    assert "runPolicy" not in guarded


def test_names_columns_and_subresources() -> None:
    crd = build_crd()
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "FineTuneJob",
        "finetunejobs",
        ["ftj"],
        ["kubetune"],
    )
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["storage"] and version["served"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Progress", "Loss", "Best", "Nodes", "Age"]


@pytest.mark.parametrize(
    "column",
    build_crd()["spec"]["versions"][0]["additionalPrinterColumns"],
    ids=lambda c: c["name"],
)
def test_printer_columns_point_at_fields_of_the_schema(column: dict[str, Any]) -> None:
    if column["jsonPath"].startswith(".metadata."):
        return
    node = SCHEMA
    for part in column["jsonPath"].lstrip(".").split("."):
        node = node["properties"][part]
    assert node["type"] == column["type"]


def test_reference_lists_every_spec_field_with_mutability() -> None:
    text = DOCS_FILE.read_text()
    for path, _ in _fields(SCHEMA["properties"]["spec"], "spec"):
        assert f"| `{path}` |" in text, path
    assert "| `spec.runPolicy.suspend` | boolean | `false` |  | yes |" in text
    assert "| `spec.training.microBatchSize` | integer [1, 4096] | `1` |  | no |" in text
