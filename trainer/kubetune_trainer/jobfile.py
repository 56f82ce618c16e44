"""The file the trainer is started with, parsed once into a typed job.

Three shapes of one thing, all parsed by the shared FineTuneJob model
(kubetune_api.parse_spec), so the trainer and the operator can never disagree
about a field:

- the operator's config.json: {"job": {name, namespace, uid}, "spec": {...}, "derived": {...}};
- a FineTuneJob manifest (apiVersion, kind, metadata, spec), e.g. examples/*.yaml;
- a standalone file with just {"spec": {...}} (or the spec's fields at the top).

A file in the trainer's own format (model.path, data, output.dir: see
config.TrainConfig) is also accepted, for development with local paths.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubetune_api import FineTuneJobSpec, SpecError, parse_spec
from kubetune_api.constants import KIND
from kubetune_trainer.config import TrainConfig, from_dict
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.settings import Settings


@dataclass(frozen=True)
class Job:
    """A FineTuneJob to run: its identity (when known) and its parsed spec."""

    spec: FineTuneJobSpec
    manifest: dict[str, Any]
    """The spec as written (camelCase), stored in checkpoints and the output's manifest."""
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None

    @property
    def record(self) -> dict[str, Any]:
        """What checkpoints and the output carry: the job's identity and its spec."""
        job = {k: v for k, v in (("name", self.name), ("namespace", self.namespace), ("uid", self.uid)) if v}
        return {"job": job, "spec": self.manifest}


def read_document(path: str | Path) -> Any:
    """The JSON or YAML content of `path`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        reason = str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({reason})") from None


def _is_job(doc: dict[str, Any]) -> bool:
    return "spec" in doc or doc.get("kind") == KIND or "dataset" in doc


def parse_job(doc: dict[str, Any], *, source: str, settings: Settings) -> Job:
    """A Job from any of the three shapes; the environment's job name and namespace win."""
    if doc.get("kind") not in (None, KIND):
        raise ConfigError(f"{source}: a {doc.get('kind')} is not a {KIND}")
    manifest = doc.get("spec", doc if "dataset" in doc else None)
    try:
        spec = parse_spec(manifest)
    except SpecError as e:
        problems = "; ".join(str(err) for err in e.errors)
        raise ConfigError(f"{source}: invalid FineTuneJob spec: {problems}") from None
    identity = doc.get("job") or doc.get("metadata") or {}
    if not isinstance(identity, dict):
        identity = {}
    return Job(spec=spec, manifest=copy.deepcopy(manifest),  # type: ignore[arg-type]
               name=settings.job_name or identity.get("name"),
               namespace=settings.namespace or identity.get("namespace"),
               uid=identity.get("uid"))


def load_job(path: str | Path, settings: Settings) -> Job | TrainConfig:
    """The job (or a developer TrainConfig) in the file at `path`."""
    doc = read_document(path)
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping (the operator's config.json, a FineTuneJob manifest, "
                          f"or a trainer config), got {type(doc).__name__}")
    if _is_job(doc):
        return parse_job(doc, source=str(path), settings=settings)
    return from_dict(TrainConfig, doc)


def redacted(manifest: dict[str, Any]) -> dict[str, Any]:
    """The spec for a log line: literal values of spec.env left out (they may hold tokens)."""
    shown = copy.deepcopy(manifest)
    for entry in shown.get("env") or []:
        if isinstance(entry, dict) and "value" in entry:
            entry["value"] = "<redacted>"
    return shown
