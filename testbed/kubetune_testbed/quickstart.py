"""The quick start, examples/quickstart.yaml, as the demo and the end-to-end tests use it.

The demo applies the file unchanged after uploading the model and the data to
where it points, and creating the Secret it names; the end-to-end tests apply
it with a tiny model and a bucket of their own. Both read those places from
the file itself, so the example a user copies is the one that is tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .repository import REPO

QUICKSTART = REPO / "examples" / "quickstart.yaml"


def s3_location(uri: str, field: str) -> tuple[str, str]:
    """(bucket, key prefix) of an s3:// URI; `field` names where it came from, for the error."""
    if not uri.startswith("s3://") or "/" not in uri.removeprefix("s3://"):
        raise ValueError(f"{QUICKSTART.name}: {field} must be an s3://bucket/key URI (got {uri!r})")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, prefix


@dataclass(frozen=True)
class QuickStart:
    """Where the quick start reads and writes: one bucket, its model, data and output prefixes, its Secret."""

    name: str
    bucket: str
    model_prefix: str  # the model folder, ending in /
    data_prefix: str  # the folder holding train.jsonl and eval.jsonl, ending in /
    output_prefix: str
    secret: str  # spec.storage.credentialsSecret

    @classmethod
    def load(cls, path: Path = QUICKSTART) -> QuickStart:
        manifest: dict[str, Any] = yaml.safe_load(path.read_text())
        spec = manifest["spec"]
        model_bucket, model = s3_location(spec["model"]["uri"], "spec.model.uri")
        data_bucket, train = s3_location(spec["dataset"]["train"], "spec.dataset.train")
        output_bucket, output = s3_location(spec["output"]["uri"], "spec.output.uri")
        if not model_bucket == data_bucket == output_bucket:
            raise ValueError(f"{path.name}: spec.model.uri, spec.dataset.train and spec.output.uri must share one "
                             f"bucket (got {model_bucket}, {data_bucket}, {output_bucket})")
        return cls(name=manifest["metadata"]["name"], bucket=model_bucket, model_prefix=model,
                   data_prefix=train.rpartition("/")[0] + "/", output_prefix=output,
                   secret=spec["storage"]["credentialsSecret"])
