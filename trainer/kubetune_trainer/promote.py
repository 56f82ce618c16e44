"""`python -m kubetune_trainer.promote`: copy a sweep's best model to where it is promoted.

The operator runs it in a CPU-only pod of the trainer image when a
FineTuneSweep ends (the pod gets the template's storage settings and Secret,
like a worker, so the operator never holds S3 keys):

    python -m kubetune_trainer.promote --source s3://b/out/sweep-3/ --target s3://b/best/ \
        --storage '{"credentialsSecret": "s3", ...}' --result '{"trial": "sweep-3", ...}'

Every file below --source (but the --exclude folders: the trial's checkpoints) is copied below --target with its SHA-256 checked
after the copy; sweep-result.json (the --result object, plus the files copied)
is written last, so a reader that finds it finds the whole model. Files at the
target that the source lacks are deleted first (a promotion replaces the model).
Errors end as the trainer's do: one line in the termination log, exit 2 for
bad input or refused storage, 1 for storage that stays unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULT_FILE = "sweep-result.json"


def promote(source: Any, target: Any, result: dict[str, Any], exclude: tuple[str, ...] = ()) -> list[str]:
    """Copy every file of store `source` (but those below the `exclude` prefixes) to store
    `target`; returns the keys copied."""
    from kubetune_trainer.errors import StorageError
    from kubetune_trainer.storage import Upload, file_sha256, raise_first_failure

    keys = [k for k in source.list() if k != RESULT_FILE and not k.startswith(exclude)]
    if not keys:
        raise StorageError(f"{source.uri}: no files to promote (the trial wrote no output there)")
    stale = [k for k in target.list() if k not in keys]
    if stale:
        target.delete(stale)  # RESULT_FILE first among them would be better; it is rewritten last anyway
    with tempfile.TemporaryDirectory(prefix="kubetune-promote-") as tmp:
        local = [(k, Path(tmp) / k) for k in keys]
        for _, path in local:
            path.parent.mkdir(parents=True, exist_ok=True)
        raise_first_failure(source.download(local))
        uploads = [Upload(path, key, file_sha256(path)) for key, path in local]
        raise_first_failure(target.upload(uploads))
        for upload in uploads:
            info = target.head(upload.key)
            if info is None or info.size != upload.path.stat().st_size or (
                    info.sha256 is not None and info.sha256 != upload.sha256):
                raise StorageError(f"{target.uri}{upload.key}: the copy does not match the source")
    target.put_bytes(RESULT_FILE, json.dumps({**result, "files": keys}, indent=2).encode())
    return keys


def main(argv: list[str] | None = None) -> int:
    from kubetune_api.parse import parse_model
    from kubetune_api.spec import StorageSpec
    from kubetune_trainer.__main__ import PREFIX, write_termination_message
    from kubetune_trainer.errors import TrainerError
    from kubetune_trainer.logs import log_event
    from kubetune_trainer.settings import TERMINATION_LOG, settings_from_env
    from kubetune_trainer.storage import open_store

    parser = argparse.ArgumentParser(prog="python -m kubetune_trainer.promote", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the best trial's output folder")
    parser.add_argument("--target", required=True, help="where it is promoted (spec.promote.uri)")
    parser.add_argument("--storage", default="{}", help="the template's spec.storage, as JSON")
    parser.add_argument("--result", default="{}", help="what sweep-result.json records, as JSON")
    parser.add_argument("--exclude", action="append", default=[],
                        help="a folder below --source not to copy (the trial's checkpoints/)")
    args = parser.parse_args(argv)
    try:
        settings = settings_from_env()
        storage = parse_model(StorageSpec, json.loads(args.storage), root="spec.template.storage")
        source = open_store(args.source, storage, settings)
        target = open_store(args.target, storage, settings)
        keys = promote(source, target, json.loads(args.result), tuple(args.exclude))
        log_event("promoted", source=args.source, target=args.target, files=len(keys))
        return 0
    except (TrainerError, ValueError) as e:
        line = " ".join(str(e).split())
        print(PREFIX + line, file=sys.stderr, flush=True)
        write_termination_message(Path(TERMINATION_LOG), line)
        return getattr(e, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
