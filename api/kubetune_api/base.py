"""The building blocks every FineTuneJob model is made of.

Each block carries a constraint twice, from one definition: as Python validation
(used by the parse step in the operator and the trainer) and as the OpenAPI or
CEL fragment that `crd.py` puts into the CustomResourceDefinition (enforced by
the API server at admission). Defining both in one place is what keeps
`kubectl apply` and the parse step from ever disagreeing about a field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import GetJsonSchemaHandler, JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

# One character that is not ASCII white space. Written out rather than \S,
# because Python's \S also excludes Unicode spaces and RE2's (CEL's) does not.
NOT_SPACE = r"[^ \t\n\r\f\v]"

RuleReason = Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired"]

# Error type of a broken Rule; parse.py splits it into one error per field.
RULE_ERROR_TYPE = "kubetune_rule"
FORMAT_ERROR_TYPE = "kubetune_format"


@dataclass(frozen=True)
class Rule:
    """A rule across fields of one model, enforced twice from one definition.

    `cel` is evaluated by the API server on the object whose model declares the
    rule (`self`); `holds` is the same rule in Python, applied to the validated
    model. `field` is the camelCase path, relative to that object, of the field
    the error is reported on. `message` reads after the field's path ("spec.x
    <message>") and says what to do.
    """

    field: str
    cel: str
    message: str
    holds: Callable[[Any], bool]
    reason: RuleReason = "FieldValueInvalid"
    # A richer message with the offending values, for the parse step only: a
    # CEL messageExpression that formats numbers costs more than the API
    # server's rule budget allows.
    explain: Callable[[Any], str] | None = None

    def to_cel(self) -> dict[str, str]:
        return {
            "rule": self.cel,
            "message": self.message,
            "fieldPath": "." + self.field,
            "reason": self.reason,
        }

    def describe(self, model: Any) -> str:
        """The message for the parse step, read after the field's path."""
        text = self.explain(model) if self.explain else self.message
        return f"is required: {text}" if self.reason == "FieldValueRequired" else text


def _add_rules_to_schema(schema: dict[str, Any], cls: type) -> None:
    rules: Sequence[Rule] = getattr(cls, "RULES", ())
    if rules:
        schema.setdefault("x-kubernetes-validations", []).extend(r.to_cel() for r in rules)


class ApiModel(BaseModel):
    """Base of every FineTuneJob spec model: frozen, strict, camelCase, no unknown fields.

    Strict, because the API server does not coerce either: "4" is not an
    integer in a manifest, so it is not one here.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        json_schema_extra=_add_rules_to_schema,
    )

    RULES: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        broken = [(r.field, r.describe(self)) for r in type(self).RULES if not r.holds(self)]
        if broken:
            raise PydanticCustomError(
                RULE_ERROR_TYPE,
                "{summary}",
                {"summary": "; ".join(f"{f} {m}" for f, m in broken), "violations": broken},
            )
        return self

    def to_manifest(self) -> dict[str, Any]:
        """The manifest form (camelCase keys, unset fields left out) that parses back to self."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def defaulted(model: type[ApiModel], description: str) -> Any:
    """A sub-object that may be left out: the API server then stores the
    model's defaults, as the model does here. (The CRD's default is the full
    object, not `{}`: the API server checks a default against the CEL rules
    without filling in nested defaults first.)"""
    return Field(
        default_factory=model,
        description=description,
        json_schema_extra={"default": model().to_manifest()},
    )


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Matches:
    """A string format: Python fullmatch of `regex`, and a CEL `matches` rule
    with the same message at the API server. `what` completes "must be ..."."""

    regex: str
    what: str

    def __post_init__(self) -> None:
        re.compile(self.regex)

    @property
    def cel_regex(self) -> str:
        return f"^(?:{self.regex})$"

    def message(self) -> str:
        return f"must be {self.what}"

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        rule = {"rule": f"self.matches(r'{self.cel_regex}')", "message": self.message()}
        json_schema.setdefault("x-kubernetes-validations", []).append(rule)
        return json_schema

    def _check(self, value: str) -> str:
        if not re.fullmatch(self.regex, value):
            raise PydanticCustomError(
                FORMAT_ERROR_TYPE,
                "{message} (got {got})",
                {"message": self.message(), "got": _quote(value)},
            )
        return value


class EmptyMeansUnset:
    """An optional string where "" means the same as leaving the field out, as
    in Kubernetes' own optional strings (and as Helm templates tend to render
    unset values). The model stores None; the CRD admits "" besides the format."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(
            lambda v: None if v == "" else v, handler(source)
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        for branch in json_schema.get("anyOf", [json_schema]):
            if branch.get("type") == "string":
                branch.pop("minLength", None)
                for rule in branch.get("x-kubernetes-validations", []):
                    rule["rule"] = f"self == '' || {rule['rule']}"
        return json_schema


class _NoRepeats:
    """A list the API server merges item by item and rejects with a repeated item (by its
    identity); so does the model. Subclasses say what identifies an item and the list type."""

    what = "an item"

    def identity(self, item: Any) -> Any:
        return item

    def list_schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(self.list_schema())
        return json_schema

    def _check(self, items: list[Any]) -> list[Any]:
        seen: set[Any] = set()
        for item in items:
            key = self.identity(item)
            if key in seen:
                raise PydanticCustomError(
                    FORMAT_ERROR_TYPE,
                    "{message} (got {got} twice)",
                    {"message": f"must not repeat {self.what}", "got": _quote(key)},
                )
            seen.add(key)
        return items


@dataclass(frozen=True)
class ListMap(_NoRepeats):
    """A list whose items are identified by `key` (env by name, volumes by name), an
    x-kubernetes-list-type map."""

    key: str

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"a {self.key}"

    def identity(self, item: Any) -> Any:
        return item[self.key] if isinstance(item, dict) else getattr(item, to_snake(self.key))

    def list_schema(self) -> dict[str, Any]:
        return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [self.key]}


class UniqueItems(_NoRepeats):
    """A list of scalars without repeats, an x-kubernetes-list-type set."""

    def list_schema(self) -> dict[str, Any]:
        return {"x-kubernetes-list-type": "set"}


def to_snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()
