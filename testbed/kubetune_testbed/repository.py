"""Where the repository is: the test bed runs its scripts, pinned versions and examples.

The test bed is never shipped; it is installed editable from the repository
(`make venv`), so the repository root is two folders above this package:
testbed/kubetune_testbed/ -> testbed/ -> the root. Found from this file, not
from the working directory or sys.path, so `python -m kubetune_testbed` works
from anywhere.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack"
# Read by hack/build-binaries.sh too, which is why it lives in hack/ and not in this package.
VERSIONS_FILE = HACK / "versions.env"
BUILD_BINARIES = HACK / "build-binaries.sh"
DEFAULT_RUN_DIR = REPO / ".local"

if not VERSIONS_FILE.is_file():  # a wheel in site-packages: no repository around it
    raise ImportError(
        f"kubetune_testbed is installed at {Path(__file__).parent}, outside a kubetune repository "
        f"(no {VERSIONS_FILE}); install it editable from the repository: `make venv`"
    )
