"""A whole FineTuneJob as the trainer receives it: the job's identity and its spec.

The operator writes one (name, namespace, uid and the parsed spec) into each
worker pod's kubetune.io/config annotation, which the pod sees as the file
config.json (a downward-API volume); the trainer reads it back with
`parse_job`. It is an ordinary FineTuneJob manifest, so a developer running
the trainer by hand gives it any FineTuneJob manifest (examples/*.yaml) in the
same place: there is one format, and the operator and the trainer cannot
disagree about a field of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .constants import API_VERSION, KIND
from .kube import Manifest
from .parse import FieldError, SpecError, parse_spec
from .spec import FineTuneJobSpec


class JobMetadata(BaseModel):
    """Who the job is (the rest of a manifest's metadata is not the trainer's concern)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None

    def identity(self) -> dict[str, str]:
        """The fields that are set, e.g. for the record a checkpoint carries."""
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if v}


class FineTuneJob(BaseModel):
    """apiVersion, kind, metadata (name, namespace, uid) and a validated spec."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", alias_generator=to_camel, validate_by_name=True,
        serialize_by_alias=True,
    )

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: JobMetadata = Field(default_factory=JobMetadata)
    spec: FineTuneJobSpec

    def to_manifest(self) -> Manifest:
        """The manifest (camelCase, unset fields left out) that `parse_job` reads back to self."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def parse_job(doc: Any) -> FineTuneJob:
    """A FineTuneJob manifest as the typed job; SpecError naming every field that is wrong."""
    if not isinstance(doc, Mapping):
        raise SpecError([FieldError("(document)", "must be a FineTuneJob manifest (an object with "
                                                  f"apiVersion, kind and spec), got {type(doc).__name__}")])
    envelope = [
        FieldError(key, f"must be {want} (got {doc.get(key)!r})")
        for key, want in (("apiVersion", API_VERSION), ("kind", KIND)) if doc.get(key) != want
    ]
    if "spec" not in doc:
        envelope.append(FieldError("spec", "is required: the job's FineTuneJob spec"))
    if envelope:
        raise SpecError(envelope)
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise SpecError([FieldError("metadata", f"must be an object (got {type(metadata).__name__})")])
    meta = JobMetadata(**{k: str(metadata[k]) for k in ("name", "namespace", "uid") if metadata.get(k)})
    return FineTuneJob(metadata=meta, spec=parse_spec(doc["spec"]))
