#!/usr/bin/env python3
"""Generate the FineTuneJob CRD and the API reference from the pydantic models.

Usage: python hack/gen_api.py [--check]

Writes crds/kubetune.io_finetunejobs.yaml, crds/kubetune.io_finetunesweeps.yaml and
docs/api.md. With --check it
writes nothing and exits 1 when a committed file differs from what the models
generate (CI runs it so the CRD never drifts from the model).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from kubetune_api.crd import build_sweep_crd, render_crd
from kubetune_api.reference import render_reference

ROOT = Path(__file__).resolve().parent.parent

CRD_PATH = ROOT / "crds" / "kubetune.io_finetunejobs.yaml"
SWEEP_CRD_PATH = ROOT / "crds" / "kubetune.io_finetunesweeps.yaml"
DOCS_PATH = ROOT / "docs" / "api.md"


def generated() -> dict[Path, str]:
    return {CRD_PATH: render_crd(), SWEEP_CRD_PATH: render_crd(build_sweep_crd()), DOCS_PATH: render_reference()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail if a committed file is out of date"
    )
    args = parser.parse_args()
    stale = []
    for path, text in generated().items():
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if args.check:
            stale.append(path)
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), str(path), "generated", lineterm="", n=1
            )
            print("\n".join(list(diff)[:40]), file=sys.stderr)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"{names} out of date: run `make crds` (python hack/gen_api.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
