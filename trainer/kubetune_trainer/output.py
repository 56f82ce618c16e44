"""Publishing the exported model to output.uri, with a manifest of its own.

The same rule as for checkpoints: the manifest goes last and names every file
with its size and SHA-256, so a reader that finds output.uri/manifest.json
finds a complete model. A previous manifest is removed before any file is
replaced, so a half-replaced model is never taken for a finished one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune_api import format_timestamp, utc_now
from kubetune_trainer.errors import StorageError
from kubetune_trainer.logs import log_event
from kubetune_trainer.manifest import MANIFEST
from kubetune_trainer.storage import Store, Upload, file_sha256, retry, upload_all

OUTPUT_FORMAT = "kubetune.io/model-v1"


def publish_model(folder: Path, store: Store, *, step: int, config: dict[str, Any], give_up_after: float,
                  selected: dict[str, Any] | None = None) -> str:
    """Upload every file of `folder` to `store`, then its manifest.json; returns the store's URI.
    `step` is the step the model is from; `selected` says why, e.g. {"select": "best", "metric":
    "f1_macro", "value": 0.87}."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    uploads = [Upload(p, str(p.relative_to(folder)), file_sha256(p)) for p in files]
    what = f"uploading the model to {store.uri}"
    retry(lambda: store.delete([MANIFEST]), what=what, give_up_after=give_up_after)
    upload_all(store, uploads, what=what, give_up_after=give_up_after)
    for u in uploads:
        info = retry(lambda u=u: store.head(u.key), what=what, give_up_after=give_up_after)  # type: ignore[misc]
        if info is None or info.size != u.path.stat().st_size or info.sha256 not in (None, u.sha256):
            raise StorageError(f"{store.uri}: {u.key} did not arrive intact; check the store")
    manifest = {
        "format": OUTPUT_FORMAT,
        "createdAt": format_timestamp(utc_now()),
        "step": step,
        **({"selected": selected} if selected else {}),
        "files": [{"name": u.key, "size": u.path.stat().st_size, "sha256": u.sha256} for u in uploads],
        "config": config,
    }
    body = json.dumps(manifest, indent=1, default=str).encode()
    retry(lambda: store.put_bytes(MANIFEST, body), what=what, give_up_after=give_up_after)
    total = sum(u.path.stat().st_size for u in uploads)
    log_event("output_published", uri=store.uri, files=len(uploads), bytes=total)
    return store.uri
