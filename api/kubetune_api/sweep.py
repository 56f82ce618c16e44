"""The FineTuneSweep: a search over FineTuneJob spec fields, run as trial FineTuneJobs.

spec.template is a FineTuneJob spec (validated exactly as one); each of
spec.parameters names a spec field by its path (training.learningRate,
method.lora.r) and the values it may take: a list, a continuous range (linear
or log scale) or an integer range. The operator (operator/kubetune_operator/sweep*)
creates the trials, reads their status.evaluation, prunes, ranks and promotes;
this module is the typed spec and status, and the one function that turns the
template and a trial's parameters into the trial's spec.

Which paths may be swept, and what type each takes, come from the FineTuneJob
spec models themselves (`SWEEPABLE`), so the CRD rejects a path that does not
exist or a value of the wrong type at `kubectl apply`, naming the field.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import typing
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from .base import FORMAT_ERROR_TYPE, ApiModel, ListMap, Rule, defaulted
from .constants import MAX_JOB_NAME_LENGTH, Phase
from .evaluation import LOWER_IS_BETTER, MetricName
from .parse import EXPLAIN_NAMES, KINDS, FieldError, SpecError, parse_model, parse_spec
from .spec import FineTuneJobSpec
from .status import Condition, Count, MetricValue, StatusModel, Timestamp
from .uris import StoreUri

SWEEP_KIND: Final = "FineTuneSweep"
SWEEP_LIST_KIND: Final = "FineTuneSweepList"
SWEEP_PLURAL: Final = "finetunesweeps"
SWEEP_SINGULAR: Final = "finetunesweep"
SWEEP_SHORT_NAMES: Final = ("fts",)
SWEEP_CRD_NAME: Final = f"{SWEEP_PLURAL}.kubetune.io"

# Labels on every trial: the sweep's name and the trial's number.
SWEEP_LABEL: Final = "kubetune.io/sweep"
TRIAL_LABEL: Final = "kubetune.io/trial"
# Annotation on a trial the median rule stopped: why.
PRUNED_ANNOTATION: Final = "kubetune.io/pruned"
# Labels of the sweep that its trials carry too (the team's Kueue queue and priority).
INHERITED_LABEL_PREFIXES: Final = ("kueue.x-k8s.io/",)

MAX_TRIALS: Final = 200
# A trial is named <sweep>-<number>: the sweep's name leaves room for "-200".
MAX_SWEEP_NAME_LENGTH: Final = MAX_JOB_NAME_LENGTH - 4

# Top-level spec fields a sweep may not vary: where things go and how the job is run are the
# sweep's business (each trial gets its own output and checkpoint folder), not a hyperparameter.
_NOT_SWEPT = frozenset({"runPolicy", "output", "checkpoint", "storage", "image", "imagePullPolicy"})

ValueKind = Literal["number", "integer", "boolean", "string"]


def _leaf_kind(annotation: Any) -> ValueKind | None:
    """The kind of value a scalar spec field takes; None for objects, lists and maps."""
    from .parse import _strip

    annotation = _strip(annotation)
    if typing.get_origin(annotation) is Literal:
        args = typing.get_args(annotation)
        if all(isinstance(a, str) for a in args):
            return "string"
        return None
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(annotation)  # type: ignore[return-value]


def _sweepable(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, ValueKind]]:
    from .parse import _model_in

    for name, field in model.model_fields.items():
        key = field.alias or name
        if not prefix and key in _NOT_SWEPT:
            continue
        path = prefix + key
        inner = _model_in(field.annotation)
        if inner is not None:
            yield from _sweepable(inner, path + ".")
        elif (kind := _leaf_kind(field.annotation)) is not None:
            yield path, kind


SWEEPABLE: Final[dict[str, ValueKind]] = dict(sorted(_sweepable(FineTuneJobSpec)))
"""Every scalar FineTuneJob spec field a sweep may vary, by camelCase path, and its kind."""


def _paths(kind: ValueKind) -> str:
    return "[" + ", ".join(f"'{p}'" for p in SWEEPABLE if SWEEPABLE[p] == kind) + "]"


# A trial parameter's value as the status reports it (every kind of field in one map).
SweepValue = Annotated[
    bool | int | float | str,
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True,
                    "description": "A value of the field: a number, true/false or a string."}),
]

def _check_path(path: str) -> str:
    if path not in SWEEPABLE:
        close = difflib.get_close_matches(path, list(SWEEPABLE), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise PydanticCustomError(
            FORMAT_ERROR_TYPE, "{message}",
            {"message": f"must be a scalar field of the FineTuneJob spec that a sweep may vary, such as "
                        f"training.learningRate or method.lora.r (got {path!r}{hint}); `kubectl explain "
                        f"ftj.spec` lists them"})
    return path


SweepPath = Annotated[str, AfterValidator(_check_path), WithJsonSchema({"type": "string", "enum": list(SWEEPABLE)})]


class ParameterRange(ApiModel):
    """A continuous range of numbers."""

    min: float = Field(description="Smallest value. Required.")
    max: float = Field(description="Largest value; must exceed min. Required.")
    scale: Literal["linear", "log"] = Field(
        default="linear",
        description="linear: uniform between min and max; log: uniform in log space (learning "
        "rates; min must be > 0).",
    )

    RULES = (
        Rule(field="max", cel="self.max > self.min", message="must be greater than min",
             holds=lambda r: r.max > r.min),
        Rule(field="min", cel="self.scale != 'log' || self.min > 0.0",
             message="must be > 0 for scale log", holds=lambda r: r.scale != "log" or r.min > 0),
    )


class IntRange(ApiModel):
    """The integers from min to max (both included), every `step`."""

    min: int = Field(description="Smallest value. Required.")
    max: int = Field(description="Largest value; must exceed min. Required.")
    step: int = Field(default=1, ge=1, le=1_000_000, description="Distance between values.")

    RULES = (
        Rule(field="max", cel="self.max > self.min", message="must be greater than min",
             holds=lambda r: r.max > r.min),
    )

    def values(self) -> list[int]:
        return list(range(self.min, self.max + 1, self.step))


# Which of a parameter's value fields suits each kind of spec field.
_VALUE_FIELDS: dict[ValueKind, tuple[str, ...]] = {
    "number": ("values", "range", "intRange"),
    "integer": ("values", "intRange"),
    "boolean": ("booleans",),
    "string": ("strings",),
}
_ALL_VALUE_FIELDS = ("values", "range", "intRange", "booleans", "strings")


def _kind_rule(kind: ValueKind) -> Rule:
    allowed = _VALUE_FIELDS[kind]
    forbidden = [f for f in _ALL_VALUE_FIELDS if f not in allowed]
    cel = f"!(self.path in {_paths(kind)}) || (" + " && ".join(f"!has(self.{f})" for f in forbidden) + ")"
    names = " or ".join(allowed) if len(allowed) < 3 else "values, range or intRange"
    return Rule(
        field="path",
        cel=cel,
        message=f"is a {kind} field: give its values as {names}",
        holds=lambda p: SWEEPABLE[p.path] != kind or all(getattr(p, _snake(f)) is None for f in forbidden),
        explain=lambda p: f"{p.path} is a {kind} field: give its values as {names} (not "
        + ", ".join(f for f in forbidden if getattr(p, _snake(f)) is not None) + ")",
    )


def _snake(camel: str) -> str:
    return {"intRange": "int_range"}.get(camel, camel)


def _integral(values: list[float] | None) -> bool:
    return all(float(v).is_integer() for v in values or ())


class SweepParameter(ApiModel):
    """One spec field the sweep varies, and the values it may take: exactly one of values, range
    or intRange (number fields; values and intRange for integer fields), booleans (true/false
    fields) or strings (string and enum fields)."""

    path: SweepPath = Field(
        description="The FineTuneJob spec field, as a path below spec: training.learningRate, "
        "method.lora.r, training.warmupRatio, ... Any scalar field but those of runPolicy, output, "
        "checkpoint, storage and the image. Required.",
    )
    values: Annotated[list[float], Field(min_length=1, max_length=100)] | None = Field(
        default=None, description="Numbers to try (whole numbers for an integer field)."
    )
    range: ParameterRange | None = Field(
        default=None, description="A continuous range (number fields; random and tpe sweeps)."
    )
    int_range: IntRange | None = Field(
        default=None, description="An integer range (number and integer fields)."
    )
    booleans: Annotated[list[bool], Field(min_length=1, max_length=2)] | None = Field(
        default=None, description="true and/or false (true/false fields)."
    )
    strings: Annotated[list[str], Field(min_length=1, max_length=100)] | None = Field(
        default=None, description="Strings to try (string and enum fields)."
    )

    RULES = (
        Rule(
            field="values",
            cel=" + ".join(f"(has(self.{f}) ? 1 : 0)" for f in _ALL_VALUE_FIELDS) + " == 1",
            message="set exactly one of values, range, intRange, booleans and strings",
            holds=lambda p: sum(getattr(p, _snake(f)) is not None for f in _ALL_VALUE_FIELDS) == 1,
            reason="FieldValueRequired",
        ),
        *(_kind_rule(k) for k in _VALUE_FIELDS),
        Rule(
            field="values",
            cel=f"!(self.path in {_paths('integer')}) || !has(self.values) || "
            "self.values.all(v, double(int(v)) == v)",
            message="must be whole numbers for an integer field",
            holds=lambda p: p.kind != "integer" or _integral(p.values),
            explain=lambda p: f"must be whole numbers for {p.path}, an integer field (got "
            + ", ".join(repr(v) for v in p.values or () if not float(v).is_integer()) + ")",
        ),
    )

    @property
    def kind(self) -> ValueKind:
        return SWEEPABLE[self.path]

    def typed(self, value: Any) -> Any:
        """A value as the spec field takes it (an integer field's 8.0 is 8)."""
        if self.kind == "integer":
            return int(value)
        if self.kind == "number":
            return float(value)
        return value

    def grid(self) -> list[Any]:
        """Every value, for a grid sweep."""
        if self.int_range is not None:
            return [self.typed(v) for v in self.int_range.values()]
        for given in (self.values, self.booleans, self.strings):
            if given is not None:
                return [self.typed(v) for v in given]
        raise ValueError(f"{self.path}: a continuous range has no grid")

    def extremes(self) -> list[Any]:
        """The values that bound what this parameter can give a trial (each checked up front)."""
        if self.range is not None:
            return [self.range.min, self.range.max]
        values = self.grid()
        return values if self.int_range is None else [values[0], values[-1]]


class SweepAlgorithm(ApiModel):
    """How the next trial's parameters are chosen."""

    type: Literal["grid", "random", "tpe"] = Field(
        default="grid",
        description="grid: every combination of the values (in order); random: independent draws; "
        "tpe: Bayesian optimisation (Optuna's Tree-structured Parzen Estimator) that learns from "
        "the trials done so far.",
    )
    seed: int = Field(default=0, ge=0, le=2_147_483_647,
                      description="Seed of random and tpe: the same seed and results give the same trials.")


class SweepObjective(ApiModel):
    """The number the sweep optimises: a metric from the trials' status.evaluation, in its own
    direction (eval_loss and perplexity lower, the others higher: the direction the trials'
    best checkpoints and early stopping already follow)."""

    metric: MetricName | None = Field(
        default=None,
        description="The metric (status.evaluation.best.value of each trial is its result; it becomes "
        "each trial's spec.evaluation.metric). Minimized for eval_loss and perplexity, maximized for "
        "the others. Unset: the template's evaluation metric.",
    )


class PruningSpec(ApiModel):
    """Median stopping: a running trial whose metric at a step is worse than the median of the
    finished trials' at that step is stopped early, marked Pruned, and frees its GPUs."""

    type: Literal["median"] = Field(default="median", description="The rule: median.")
    min_trials: int = Field(
        default=2, ge=1, le=MAX_TRIALS,
        description="Finished trials needed before any trial is pruned.",
    )
    start_step: int = Field(
        default=0, ge=0, le=100_000_000,
        description="No trial is pruned on an evaluation before this optimizer step.",
    )


class PromoteSpec(ApiModel):
    """Where the best trial's model is copied when the sweep ends."""

    uri: StoreUri = Field(
        description="A folder (s3://bucket/prefix/ or pvc://claim/path/) that receives the best "
        "trial's output and a sweep-result.json naming the trial, its parameters and its metric. "
        "Required.",
    )


def _template_has_eval(s: FineTuneSweepSpec) -> bool:
    return s.template.dataset.has_eval


class FineTuneSweepSpec(ApiModel):
    """Desired state of a FineTuneSweep. Only suspend, parallelism and maxTrials may change."""

    template: FineTuneJobSpec = Field(
        description="The spec every trial starts from, validated as a FineTuneJob spec. Each trial "
        "writes to <output.uri><trial name>/ (and its checkpoints below that, or below "
        "<checkpoint.uri><trial name>/). Required."
    )
    parameters: Annotated[list[SweepParameter], Field(min_length=1, max_length=16), ListMap("path")] = Field(
        description="The spec fields the trials vary. Required."
    )
    algorithm: SweepAlgorithm = defaulted(SweepAlgorithm, "How trial parameters are chosen.")
    objective: SweepObjective = defaulted(SweepObjective, "The metric the sweep optimises.")
    max_trials: int | None = Field(
        default=None, ge=1, le=MAX_TRIALS,
        description="Trials to run at most. Unset: every combination for grid; required for "
        "random and tpe.",
    )
    parallelism: int = Field(default=1, ge=1, le=MAX_TRIALS,
                             description="Trials running (not finished) at the same time, at most.")
    pruning: PruningSpec | None = Field(default=None, description="Unset: no trial is stopped early.")
    promote: PromoteSpec | None = Field(
        default=None, description="Unset: the best trial's output stays where it is."
    )
    suspend: bool = Field(
        default=False,
        description="true suspends every running trial (spec.runPolicy.suspend) and starts no "
        "new one; false again resumes them.",
    )

    MUTABLE_FIELDS: ClassVar[frozenset[str]] = frozenset({"suspend", "parallelism", "maxTrials"})

    RULES = (
        Rule(
            field="parameters",
            cel="self.algorithm.type != 'grid' || self.parameters.all(p, !has(p.range))",
            message="a grid sweep takes values or intRange; a continuous range needs algorithm "
            "random or tpe",
            holds=lambda s: s.algorithm.type != "grid" or all(p.range is None for p in s.parameters),
        ),
        Rule(
            field="maxTrials",
            cel="self.algorithm.type == 'grid' || has(self.maxTrials)",
            message="random and tpe sweeps need maxTrials",
            holds=lambda s: s.algorithm.type == "grid" or s.max_trials is not None,
            reason="FieldValueRequired",
        ),
        Rule(
            field="template.dataset",
            cel="(has(self.template.dataset.eval) && self.template.dataset.eval != '') || "
            "has(self.template.dataset.evalSplit)",
            message="needs evaluation records (dataset.eval or dataset.evalSplit): a trial's "
            "result is its best evaluation",
            holds=_template_has_eval,
            reason="FieldValueRequired",
        ),
    )

    @property
    def metric(self) -> str:
        return self.objective.metric or self.template.metric

    @property
    def maximize(self) -> bool:
        return self.metric not in LOWER_IS_BETTER

    @property
    def grid_size(self) -> int:
        return math.prod(len(p.grid()) for p in self.parameters)

    @property
    def trial_limit(self) -> int:
        """Trials the sweep runs at most: maxTrials, or the grid's size (whichever is smaller)."""
        if self.algorithm.type == "grid":
            return min(self.grid_size, self.max_trials or MAX_TRIALS)
        assert self.max_trials is not None
        return self.max_trials

    def better(self, a: float, b: float | None) -> bool:
        """Whether result `a` beats `b`."""
        return b is None or (a > b if self.maximize else a < b)

    def grid_point(self, number: int) -> dict[str, Any]:
        """The parameters of grid trial `number` (0-based), the last parameter varying fastest."""
        point = next(itertools.islice(itertools.product(*(p.grid() for p in self.parameters)), number, None))
        return {p.path: v for p, v in zip(self.parameters, point, strict=True)}


EXPLAIN_NAMES[FineTuneSweepSpec] = SWEEP_SHORT_NAMES[0]
KINDS[FineTuneSweepSpec] = SWEEP_KIND


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set a camelCase dotted path in a manifest, creating the objects on the way."""
    *parents, leaf = path.split(".")
    for key in parents:
        child = doc.get(key)
        if not isinstance(child, dict):
            child = doc[key] = {}
        doc = child
    doc[leaf] = value


def trial_spec_manifest(template: FineTuneJobSpec, trial: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's spec as a manifest: the template, its parameters, and its own output and
    checkpoint folders (<output.uri><trial>/, <checkpoint.uri><trial>/)."""
    doc = copy.deepcopy(template.to_manifest())
    for path, value in parameters.items():
        set_path(doc, path, value)
    doc["output"]["uri"] = template.output.uri.rstrip("/") + f"/{trial}/"
    if template.checkpoint.uri:
        doc.setdefault("checkpoint", {})["uri"] = template.checkpoint.uri.rstrip("/") + f"/{trial}/"
    return doc


def trial_spec(template: FineTuneJobSpec, trial: str, parameters: Mapping[str, Any]) -> FineTuneJobSpec:
    """The trial's validated spec; SpecError (fields under spec.template) when the values do not fit."""
    return parse_spec(trial_spec_manifest(template, trial, parameters), root="spec.template")


def check_values(spec: FineTuneSweepSpec) -> list[FieldError]:
    """Values that would make an invalid trial (out of the field's bounds, or breaking a rule of
    the template), each checked alone against the template: the sweep fails before any trial."""
    problems = []
    for i, parameter in enumerate(spec.parameters):
        for value in parameter.extremes():
            try:
                trial_spec(spec.template, "check", {parameter.path: value})
            except SpecError as e:
                detail = "; ".join(str(err) for err in e.errors)
                problems.append(FieldError(f"spec.parameters[{i}]", f"value {value!r} makes an invalid trial: {detail}"))
    return problems


def parse_sweep_spec(spec: Any) -> FineTuneSweepSpec:
    """A FineTuneSweep manifest's spec as the typed model, its values checked against the
    template; SpecError naming every field that is wrong."""
    parsed = parse_model(FineTuneSweepSpec, spec)
    problems = check_values(parsed)
    if problems:
        raise SpecError(problems, SWEEP_KIND)
    return parsed


# ---------------------------------------------------------------------------- status

class SweepPhase:
    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


SweepPhaseName = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"]
TrialPhase = Literal["Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed", "Pruned"]
TRIAL_DONE: Final = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value, "Pruned"})


class TrialRow(StatusModel):
    """One trial: its parameters, phase and result."""

    number: Count = Field(description="0, 1, 2, ... in the order the trials were created.")
    name: str = Field(max_length=64, description="The trial's FineTuneJob (<sweep>-<number>).")
    parameters: dict[str, SweepValue] = Field(description="The value of each swept field.")
    basis: Annotated[list[Count], Field(max_length=MAX_TRIALS)] | None = Field(
        default=None,
        description="tpe: the finished trials whose results chose these parameters (with the seed, "
        "they determine them).",
    )
    phase: TrialPhase = Field(default="Pending", description="The trial's phase, or Pruned.")
    value: float | None = Field(default=None, description="Its best value of the objective metric.")
    step: Count | None = Field(default=None, description="The step of that best value.")
    curve: Annotated[list[MetricValue], Field(max_length=100)] | None = Field(
        default=None, description="The objective metric at each evaluation seen (the median rule's input).",
    )
    message: str | None = Field(default=None, max_length=1024, description="Why it failed or was pruned.")

    @property
    def done(self) -> bool:
        return self.phase in TRIAL_DONE


class TrialCounts(StatusModel):
    """Trials by state."""

    created: Count = Field(default=0, description="Trials created so far.")
    running: Count = Field(default=0, description="Trials not finished.")
    succeeded: Count = Field(default=0, description="Trials that succeeded.")
    failed: Count = Field(default=0, description="Trials that failed.")
    pruned: Count = Field(default=0, description="Trials stopped by the median rule.")


class BestTrial(StatusModel):
    """The best trial so far."""

    name: str = Field(max_length=64, description="The trial's FineTuneJob.")
    number: Count = Field(description="The trial's number.")
    value: float = Field(description="Its best value of the objective metric.")
    step: Count | None = Field(default=None, description="The step of that value.")
    parameters: dict[str, SweepValue] = Field(description="Its parameters.")


class PromotionStatus(StatusModel):
    """The copy of the best trial's model to spec.promote.uri."""

    phase: Literal["Pending", "Succeeded", "Failed"] = Field(description="Pending, Succeeded or Failed.")
    trial: str = Field(max_length=64, description="The trial promoted.")
    uri: str = Field(max_length=2048, description="Where its model now is.")
    message: str | None = Field(default=None, max_length=4096, description="Why it failed.")


class FineTuneSweepStatus(StatusModel):
    """Observed state of a FineTuneSweep."""

    observed_generation: Count | None = Field(default=None, description="metadata.generation last acted on.")
    phase: SweepPhaseName | None = Field(
        default=None, description="Pending, Running, Suspended, Succeeded or Failed; the last two are final."
    )
    conditions: Annotated[list[Condition], Field(max_length=8), ListMap("type")] | None = Field(
        default=None, description="Running, Succeeded (with the best value) or Failed."
    )
    start_time: Timestamp | None = Field(default=None, description="When the first trial was created.")
    completion_time: Timestamp | None = Field(default=None, description="When it reached Succeeded or Failed.")
    metric: str | None = Field(default=None, max_length=64, description="The objective metric.")
    direction: Literal["minimize", "maximize"] | None = Field(default=None, description="Its direction.")
    counts: TrialCounts | None = Field(default=None, description="Trials by state.")
    trials_text: str | None = Field(
        default=None, max_length=32, description='"done/total" for `kubectl get`.'
    )
    trials: Annotated[list[TrialRow], Field(max_length=MAX_TRIALS)] | None = Field(
        default=None, description="Every trial, by number."
    )
    best: BestTrial | None = Field(default=None, description="The best finished trial so far.")
    promotion: PromotionStatus | None = Field(default=None, description="The promotion of the best model.")
    message: str | None = Field(default=None, max_length=32768, description="Summary of the last transition.")

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions or () if c.type == type_), None)


__all__ = [
    "MAX_SWEEP_NAME_LENGTH", "MAX_TRIALS", "PRUNED_ANNOTATION", "SWEEPABLE", "SWEEP_KIND", "SWEEP_LABEL",
    "TRIAL_LABEL", "BestTrial", "FineTuneSweepSpec", "FineTuneSweepStatus", "IntRange", "ParameterRange",
    "PromoteSpec", "PromotionStatus", "PruningSpec", "SweepAlgorithm", "SweepObjective", "SweepParameter",
    "TrialCounts", "TrialRow", "check_values", "parse_sweep_spec", "set_path", "trial_spec",
    "trial_spec_manifest",
]
