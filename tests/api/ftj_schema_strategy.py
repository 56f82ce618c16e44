"""Hypothesis strategies for values a structural OpenAPI schema admits.

Reads the CRD's own schema (types, bounds, enums, lengths, list sizes, list-map
keys and sets, and
the string formats of its `self.matches(...)` CEL rules), so the property tests
generate what the API server would let through its per-field checks.
"""

from __future__ import annotations

import math
import re
from typing import Any

from hypothesis import strategies as st

_MATCHES = re.compile(r"self\.matches\(r'(?P<regex>.*)'\)")

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _regex_of(node: dict[str, Any]) -> tuple[str | None, bool]:
    """The format regex of a string node's CEL rule, and whether "" is also admitted."""
    for rule in node.get("x-kubernetes-validations", []):
        match = _MATCHES.search(rule["rule"])
        if match:
            return match["regex"], rule["rule"].startswith("self == '' ||")
    return None, False


def _strings(node: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = node.get("minLength", 0), min(node.get("maxLength", 40), 40)
    regex, empty_ok = _regex_of(node)
    if regex is None:
        return st.text(min_size=low, max_size=high)
    limit = node.get("maxLength", 10_000)
    formatted = st.from_regex(regex, fullmatch=True).filter(lambda s: low <= len(s) <= limit)
    return st.one_of(st.just(""), formatted) if empty_ok else formatted


def _numbers(node: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    low, high = node.get("minimum"), node.get("maximum")
    excl_low, excl_high = bool(node.get("exclusiveMinimum")), bool(node.get("exclusiveMaximum"))
    int_low = None if low is None else (math.floor(low) + 1 if excl_low else math.ceil(low))
    int_high = None if high is None else (math.ceil(high) - 1 if excl_high else math.floor(high))
    ints = st.integers(min_value=int_low, max_value=int_high)
    if integer:
        return ints
    floats = st.floats(
        min_value=low,
        max_value=high,
        exclude_min=excl_low,
        exclude_max=excl_high,
        allow_nan=False,
        allow_infinity=False,
    )
    if int_low is not None and int_high is not None and int_low > int_high:
        return floats
    return st.one_of(floats, ints)  # JSON numbers may well be written as integers


def admitted(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that pass the node's types, bounds, enums, lengths and string formats."""
    if node.get("x-kubernetes-int-or-string"):
        return st.one_of(st.integers(0, 10**12), _strings({**node, "type": "string"}))
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind in ("integer", "number"):
        return _numbers(node, integer=kind == "integer")
    if kind == "string":
        return _strings(node)
    if kind == "array":
        keys = node.get("x-kubernetes-list-map-keys")
        unique_by: Any = None
        if keys:
            unique_by = lambda item: tuple(item[k] for k in keys)  # noqa: E731
        elif node.get("x-kubernetes-list-type") == "set":
            unique_by = lambda item: item  # noqa: E731
        low = node.get("minItems", 0)
        return st.lists(
            admitted(node["items"]),
            min_size=low,
            max_size=max(low, min(node.get("maxItems", 3), 3)),
            unique_by=unique_by,
        )
    if kind == "object" and "properties" in node:
        props = node["properties"]
        required = set(node.get("required", []))
        return st.fixed_dictionaries(
            {k: admitted(v) for k, v in props.items() if k in required},
            optional={k: admitted(v) for k, v in props.items() if k not in required},
        )
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return st.dictionaries(
            st.text(min_size=1, max_size=16),
            admitted(node["additionalProperties"]),
            max_size=min(node.get("maxProperties", 3), 3),
        )
    # Free-form (x-kubernetes-preserve-unknown-fields).
    return st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=3)


def has_field(schema: dict[str, Any], path: str) -> bool:
    """Whether a path such as "spec.env[2].name" or "spec.resources.requests[cpu]" names a
    field of the schema (anything below a free-form object counts)."""
    node = schema
    for token in re.findall(r"\.?([^.\[\]]+)|\[([^\]]*)\]", path):
        name, _ = token
        if node.get("x-kubernetes-preserve-unknown-fields") and name not in node.get(
            "properties", {}
        ):
            return True
        if name:
            if name not in node.get("properties", {}):
                return False
            node = node["properties"][name]
        elif "items" in node:
            node = node["items"]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return False
    return True
