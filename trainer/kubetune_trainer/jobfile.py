"""The file the trainer is started with: a FineTuneJob manifest, parsed once.

The operator puts one (kubetune_api.FineTuneJob: the job's identity and its
spec) in each worker pod's kubetune.io/config annotation, which a downward-API
volume mounts as config.json. A developer runs the trainer by hand on any
FineTuneJob manifest, e.g. one of examples/*.yaml with pvc:// locations, which
KUBETUNE_PVC_ROOT maps to local folders. Both are parsed by the shared model,
so the trainer and the operator never disagree about a field.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from kubetune_api import FineTuneJob, JobMetadata, Manifest, SpecError, parse_job
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.settings import Settings


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


def load_job(path: str | Path, settings: Settings) -> FineTuneJob:
    """The FineTuneJob in the file at `path`; the pod's environment names the job it reports to."""
    try:
        job = parse_job(read_document(path))
    except SpecError as e:
        problems = "; ".join(str(err) for err in e.errors)
        raise ConfigError(f"{path}: invalid {e.what}: {problems}") from None
    if settings.job_name or settings.namespace:
        meta = job.metadata
        job = job.model_copy(update={"metadata": JobMetadata(
            name=settings.job_name or meta.name, namespace=settings.namespace or meta.namespace, uid=meta.uid)})
    return job


def job_record(job: FineTuneJob) -> dict[str, Any]:
    """What checkpoints and the output carry: the job's identity and its spec."""
    return {"job": job.metadata.identity(), "spec": job.spec.to_manifest()}


def redacted(spec: Manifest) -> Manifest:
    """A spec for a log line: literal values of spec.env left out (they may hold tokens)."""
    shown = copy.deepcopy(spec)
    for entry in shown.get("env") or []:
        if isinstance(entry, dict) and "value" in entry:
            entry["value"] = "<redacted>"
    return shown
