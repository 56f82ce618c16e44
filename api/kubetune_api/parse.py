"""The parse step: a manifest's spec becomes a frozen FineTuneJobSpec, or a list
of errors that each name the field and say what to do.

The operator parses every spec it reconciles (and fails the job with reason
InvalidSpec when this fails), the trainer parses the spec the operator handed
it, and both see the same messages a user gets from `kubectl apply`, e.g.
"spec.training.microBatchSize must be >= 1 (got 0)".
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from .base import FORMAT_ERROR_TYPE, RULE_ERROR_TYPE
from .constants import SHORT_NAMES
from .spec import FineTuneJobSpec


@dataclass(frozen=True)
class FieldError:
    """One problem: the field's path ("spec.env[2].name") and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path} {self.message}"


class SpecError(ValueError):
    """A spec that is not a valid FineTuneJob spec; `errors` lists every problem found."""

    def __init__(self, errors: Sequence[FieldError], kind: str = "FineTuneJob") -> None:
        self.errors = list(errors)
        self.kind = kind
        super().__init__(str(self))

    @property
    def what(self) -> str:
        """What is invalid: "FineTuneJob spec", or "FineTuneJob" when more than its spec is wrong."""
        in_spec = all(e.path == "spec" or e.path.startswith(("spec.", "spec[")) for e in self.errors)
        return f"{self.kind} spec" if in_spec else self.kind

    def __str__(self) -> str:
        count = len(self.errors)
        head = f"invalid {self.what} ({count} error{'s' if count != 1 else ''}):"
        return "\n".join([head, *(f"  - {e}" for e in self.errors)])


def parse_spec(spec: Any, *, root: str = "spec") -> FineTuneJobSpec:
    """Validate a spec (a mapping as in a manifest, camelCase keys) into the typed model.

    Raises SpecError, and nothing else, for anything that is not a valid spec.
    """
    return parse_model(FineTuneJobSpec, spec, root=root)


M = typing.TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], spec: Any, *, root: str = "spec") -> M:
    """`parse_spec` for any spec model (the FineTuneSweep's too): SpecError naming every field."""
    if not isinstance(spec, Mapping):
        raise SpecError([FieldError(root, f"must be an object (got {_got(spec)})")])
    try:
        return model.model_validate(_plain(spec), by_alias=True, by_name=False)
    except ValidationError as exc:
        errors = [e for err in exc.errors() for e in _field_errors(err, root, model)]
        raise SpecError(errors, KINDS.get(model, "FineTuneJob")) from None


def _plain(value: Any) -> Any:
    """Plain dicts and lists from any mappings and sequences (e.g. kopf's views)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


_TYPE_MESSAGES = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "list_type": "must be a list",
    "finite_number": "must be a finite number",
}
_BOUND_MESSAGES = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}


def _field_errors(err: Any, root: str, model: type[BaseModel] = FineTuneJobSpec) -> list[FieldError]:
    loc: tuple[str | int, ...] = tuple(err["loc"])
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == RULE_ERROR_TYPE:
        return [
            FieldError(_path(root, loc + tuple(field.split(".")), model), message)
            for field, message in ctx["violations"]
        ]
    path = _path(root, loc, model)
    if kind == "missing":
        return [FieldError(path, f"is required; see `kubectl explain {_explain_path(path, model)}`")]
    if kind == "extra_forbidden":
        return [FieldError(path, _unknown_field_message(root, loc, model))]
    if kind == FORMAT_ERROR_TYPE:
        message = err["msg"]
    elif kind in _TYPE_MESSAGES:
        message = f"{_TYPE_MESSAGES[kind]} (got {_got(value)})"
    elif kind == "literal_error":
        message = f"must be {ctx['expected']} (got {_got(value)})"
    elif kind in _BOUND_MESSAGES:
        key, op = _BOUND_MESSAGES[kind]
        message = f"must be {op} {_got(ctx[key])} (got {_got(value)})"
    elif kind == "string_too_short":
        n = ctx["min_length"]
        message = "must not be empty" if n == 1 else f"must be at least {n} characters long"
    elif kind == "string_too_long":
        message = f"must be at most {ctx['max_length']} characters long (got {len(value)})"
    elif kind == "too_long":
        message = f"must have at most {ctx['max_length']} entries (got {ctx.get('actual_length')})"
    elif kind == "too_short":
        message = f"must have at least {ctx['min_length']} entries"
    else:
        message = f"is invalid: {err['msg']} (got {_got(value)})"
    return [FieldError(path, message)]


def _got(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    return type(value).__name__


@dataclass(frozen=True)
class _Step:
    """One part of an error's location, and what it is in the model."""

    part: str | int
    in_brackets: bool  # a list index or a map key rather than a field name
    owner: type[BaseModel] | None  # the model the part is a field of, when it is one


def _walk(loc: tuple[str | int, ...], root_model: type[BaseModel]) -> list[_Step]:
    steps = []
    model: type[BaseModel] | None = root_model
    annotation: Any = None
    for part in loc:
        if isinstance(part, int) or (model is None and _is_mapping(annotation)):
            steps.append(_Step(part, True, None))
            annotation = _item_type(annotation)
        else:
            steps.append(_Step(part, not _PLAIN_NAME.fullmatch(part), model))
            field = _fields_by_alias(model).get(part) if model else None
            annotation = field.annotation if field else None
        model = _model_in(annotation)
    return steps


def _path(root: str, loc: tuple[str | int, ...], model: type[BaseModel]) -> str:
    """A Kubernetes-style field path: fields after dots, list indexes and map keys in brackets."""
    return root + "".join(f"[{s.part}]" if s.in_brackets else f".{s.part}" for s in _walk(loc, model))


# A key that can follow a "." in a path; any other (a map key such as
# "nvidia.com/gpu", or an unknown key such as "a.b") is written in brackets.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _fields_by_alias(model: type[BaseModel]) -> dict[str, Any]:
    return {(f.alias or name): f for name, f in model.model_fields.items()}


def _strip(annotation: Any) -> Any:
    """Drop Annotated and Optional wrappers."""
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation


def _model_in(annotation: Any) -> type[BaseModel] | None:
    annotation = _strip(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _is_mapping(annotation: Any) -> bool:
    return typing.get_origin(_strip(annotation)) is dict


def _item_type(annotation: Any) -> Any:
    args = typing.get_args(_strip(annotation))
    return args[-1] if args else None


def _unknown_field_message(root: str, loc: tuple[str | int, ...], model: type[BaseModel]) -> str:
    name, owner = str(loc[-1]), _walk(loc, model)[-1].owner
    known = list(_fields_by_alias(owner)) if owner else []
    hint = ""
    if to_camel(name) in known and to_camel(name) != name:
        hint = f" (did you mean {to_camel(name)}? field names are camelCase)"
    elif close := difflib.get_close_matches(name, known, n=1):
        hint = f" (did you mean {close[0]}?)"
    return f"is not a field of {_path(root, loc[:-1], model)}; remove it{hint}"


# The short name `kubectl explain` knows each spec model's resource by, and the kind it names.
EXPLAIN_NAMES: dict[type[BaseModel], str] = {FineTuneJobSpec: SHORT_NAMES[0]}
KINDS: dict[type[BaseModel], str] = {}


def _explain_path(path: str, model: type[BaseModel] = FineTuneJobSpec) -> str:
    """The `kubectl explain` argument for a field path, without list indexes or map keys."""
    return ".".join([EXPLAIN_NAMES.get(model, SHORT_NAMES[0]), *re.sub(r"\[[^\]]*\]", "", path).split(".")])
