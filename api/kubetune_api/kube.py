"""Kubernetes value types a FineTuneJob passes through to its worker pods.

Quantities, object names, env, envFrom, image pull secrets, volumes and volume
mounts keep the shape users know from a Pod, so they can be copied from one.
Only what the operator needs to rely on is typed (names, the keys of lists);
the rest of a Volume or an env var's `valueFrom` is passed through as it is
and checked by the API server when the pod is created.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, GetCoreSchemaHandler
from pydantic.json_schema import GetJsonSchemaHandler, JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from .base import FORMAT_ERROR_TYPE, ApiModel, Matches, Rule
from .constants import CONFIG_ANNOTATION

# RFC 1123 names, as Kubernetes validates object names.
DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"{DNS_LABEL}(\.{DNS_LABEL})*"

ObjectName = Annotated[
    str,
    Field(max_length=253),
    Matches(DNS_SUBDOMAIN, "a Kubernetes object name: lowercase letters, digits, '-' and '.'"),
]
LabelName = Annotated[
    str,
    Field(max_length=63),
    Matches(
        DNS_LABEL, "a lowercase RFC 1123 label: letters, digits and '-', at most 63 characters"
    ),
]

# A resource quantity without a sign ("500m", "64Gi", "1.5", "8"): a negative
# request or limit is never what a user meant.
QUANTITY = r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+]?[0-9]+)?"
MAX_QUANTITY_LENGTH = 64
_QUANTITY_WHAT = "a non-negative Kubernetes quantity such as 500m, 64Gi or 8"


class _QuantityFormat:
    """int-or-string like resource.Quantity: non-negative integers or quantity strings."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self._check)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "maxLength": MAX_QUANTITY_LENGTH,
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": f"type(self) == int ? self >= 0 : self.matches(r'^(?:{QUANTITY})$')",
                    "message": f"must be {_QUANTITY_WHAT}",
                }
            ],
        }

    @staticmethod
    def _check(value: Any) -> int | str:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if (
            isinstance(value, str)
            and len(value) <= MAX_QUANTITY_LENGTH
            and re.fullmatch(QUANTITY, value)
        ):
            return value
        raise PydanticCustomError(
            FORMAT_ERROR_TYPE,
            "{message} (got {got})",
            {"message": f"must be {_QUANTITY_WHAT}", "got": repr(value)},
        )


Quantity = Annotated[int | str, _QuantityFormat()]

FreeForm = dict[str, Any]
"""An object passed through unchecked (x-kubernetes-preserve-unknown-fields)."""

Manifest = dict[str, Any]
"""A Kubernetes object (or a part of one) as plain JSON-ready data, camelCase keys."""


# DeepSpeed configuration keys that spec.training owns.
DEEPSPEED_BATCH_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
)


class _DeepSpeedConfigSchema:
    """A free-form object that still declares the keys a CEL rule must see:
    CEL cannot look into unknown fields, only into declared ones."""

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        declared = {
            "description": "Set from spec.training; may not be set here.",
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
        }
        return {
            "type": "object",
            "properties": {key: dict(declared) for key in DEEPSPEED_BATCH_KEYS},
            "x-kubernetes-preserve-unknown-fields": True,
        }


DeepSpeedConfig = Annotated[dict[str, Any], _DeepSpeedConfigSchema()]


class LocalObjectReference(ApiModel):
    """A reference to an object in the job's namespace, by name."""

    name: ObjectName = Field(description="Name of the object, in the job's namespace. Required.")


class OptionalObjectReference(LocalObjectReference):
    """A ConfigMap or Secret whose keys become environment variables."""

    optional: bool | None = Field(
        default=None,
        description="When true, the pod starts even if the object does not exist. "
        "Unset: the object must exist (Kubernetes' default).",
    )


EnvName = Annotated[
    str,
    Field(min_length=1, max_length=256),
    Matches(r"[-._a-zA-Z][-._a-zA-Z0-9]*", "a variable name of letters, digits, '_', '-' and '.'"),
]


class EnvVar(ApiModel):
    """An environment variable for every trainer process, as in a Pod's `env`."""

    name: EnvName = Field(description="Name of the variable. Required; unique within env.")
    value: str | None = Field(
        default=None,
        max_length=32768,
        description="Literal value. Unset: empty, or taken from valueFrom.",
    )
    value_from: FreeForm | None = Field(
        default=None,
        description="Source of the value, as in a Pod (secretKeyRef, configMapKeyRef, "
        "fieldRef, resourceFieldRef). Passed to the pod unchanged. Unset: use value.",
    )

    RULES = (
        Rule(
            field="valueFrom",
            cel="!(has(self.value) && has(self.valueFrom))",
            message="may not be set together with value; set one of them",
            holds=lambda e: not (e.value is not None and e.value_from is not None),
            reason="FieldValueForbidden",
        ),
    )


class EnvFromSource(ApiModel):
    """A ConfigMap or Secret all of whose keys become environment variables."""

    prefix: str | None = Field(
        default=None,
        max_length=256,
        description="Text prepended to every key to form the variable name. Unset: no prefix.",
    )
    config_map_ref: OptionalObjectReference | None = Field(
        default=None,
        description="The ConfigMap to read. Set exactly one of configMapRef and secretRef.",
    )
    secret_ref: OptionalObjectReference | None = Field(
        default=None,
        description="The Secret to read. Set exactly one of configMapRef and secretRef.",
    )

    RULES = (
        Rule(
            field="configMapRef",
            cel="has(self.configMapRef) || has(self.secretRef)",
            message="set exactly one of configMapRef and secretRef",
            holds=lambda e: e.config_map_ref is not None or e.secret_ref is not None,
            reason="FieldValueRequired",
        ),
        Rule(
            field="secretRef",
            cel="!(has(self.configMapRef) && has(self.secretRef))",
            message="may not be set together with configMapRef; set exactly one of them",
            holds=lambda e: e.config_map_ref is None or e.secret_ref is None,
            reason="FieldValueForbidden",
        ),
    )


class Volume(ApiModel):
    """A pod volume, exactly as in a Pod's `volumes` (name plus one source)."""

    model_config = ConfigDict(extra="allow")

    name: LabelName = Field(
        description="Name of the volume, referenced by volumeMounts. Required; unique."
    )


class VolumeMount(ApiModel):
    """Where a volume is mounted in every trainer container, as in a container's `volumeMounts`."""

    model_config = ConfigDict(extra="allow")

    name: LabelName = Field(description="Name of a volume in spec.volumes. Required.")
    mount_path: Annotated[
        str, Field(max_length=1024), Matches(r"/.*", "an absolute path such as /data")
    ] = Field(description="Absolute path in the container. Required; unique within volumeMounts.")


# Label and annotation keys as Kubernetes validates them: an optional DNS subdomain prefix and '/',
# then a name of at most 63 characters; label values are empty or such a name.
_KEY_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
METADATA_KEY = rf"({DNS_SUBDOMAIN}/)?{_KEY_NAME}"
# The labels the operator sets on every worker: a user's podMetadata may not name them.
OPERATOR_LABEL_PREFIX = "kubetune.io/"
OPERATOR_LABEL_KEYS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/managed-by")

LabelValue = Annotated[
    str,
    Field(max_length=63),
    Matches(f"({_KEY_NAME})?", "empty or at most 63 letters, digits, '-', '_' and '.', "
            "beginning and ending with a letter or digit"),
]


def _bad_keys(keys: Any) -> list[str]:
    return [k for k in keys or () if not re.fullmatch(METADATA_KEY, k) or len(k.rpartition("/")[0]) > 253]


def _reserved_keys(keys: Any) -> list[str]:
    return [k for k in keys or () if k.startswith(OPERATOR_LABEL_PREFIX) or k in OPERATOR_LABEL_KEYS]


def _metadata_rules(field: str, what: str) -> tuple[Rule, Rule]:
    keys_ok = (f"self.{field}.all(k, k.matches(r'^(?:{METADATA_KEY})$') && "
               "(!k.contains('/') || k.indexOf('/') <= 253))")
    reserved = ", ".join(f"'{k}'" for k in OPERATOR_LABEL_KEYS)
    return (
        Rule(
            field=field,
            cel=f"!has(self.{field}) || {keys_ok}",
            message=f"has a key that is not a valid {what} key: an optional DNS subdomain prefix and "
            "'/', then at most 63 letters, digits, '-', '_' and '.' (e.g. team or example.com/cost-centre)",
            holds=lambda m: not _bad_keys(getattr(m, field)),
            explain=lambda m: f"has a key that is not a valid {what} key: "
            f"{', '.join(map(repr, _bad_keys(getattr(m, field))))}; use an optional DNS subdomain prefix and '/', "
            "then at most 63 letters, digits, '-', '_' and '.'",
        ),
        Rule(
            field=field,
            cel=f"!has(self.{field}) || self.{field}.all(k, !k.startsWith('{OPERATOR_LABEL_PREFIX}') && "
            f"!(k in [{reserved}]))",
            message=f"may not name the operator's own keys ({OPERATOR_LABEL_PREFIX}..., "
            f"{', '.join(OPERATOR_LABEL_KEYS)}); use another key",
            holds=lambda m: not _reserved_keys(getattr(m, field)),
            explain=lambda m: f"may not name the operator's own keys: {', '.join(map(repr, _reserved_keys(getattr(m, field))))}; "
            "use another key",
            reason="FieldValueForbidden",
        ),
    )


class PodMetadataSpec(ApiModel):
    """Labels and annotations for every worker pod, beside the operator's own."""

    labels: Annotated[dict[str, LabelValue], Field(max_length=64)] | None = Field(
        default=None,
        description="Labels of every worker pod, e.g. a cost centre or a team that cluster policies "
        f"select on. The operator's own keys ({OPERATOR_LABEL_PREFIX}..., "
        f"{', '.join(OPERATOR_LABEL_KEYS)}) are refused. Unset: only the operator's.",
    )
    annotations: Annotated[dict[str, Annotated[str, Field(max_length=16384)]], Field(max_length=64)] | None = Field(
        default=None,
        description="Annotations of every worker pod, e.g. for a service mesh or a log collector, "
        f"beside the operator's one ({CONFIG_ANNOTATION}: the trainer's config), which they may not "
        "name. Unset: none.",
    )

    RULES = (
        *_metadata_rules("labels", "label"),
        _metadata_rules("annotations", "annotation")[0],
        Rule(
            field="annotations",
            cel=f"!has(self.annotations) || !('{CONFIG_ANNOTATION}' in self.annotations)",
            message=f"may not name {CONFIG_ANNOTATION}: the operator puts the trainer's config there; "
            "use another key",
            holds=lambda m: CONFIG_ANNOTATION not in (m.annotations or {}),
            reason="FieldValueForbidden",
        ),
    )


PullPolicy = Literal["Always", "IfNotPresent", "Never"]
