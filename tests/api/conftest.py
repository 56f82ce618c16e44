"""Fixtures for the API's cluster tests: the CRD installed once per session, and
a namespace shared by the tests that only dry-run or never change what they create."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from ftj_cases import CRD_FILE, SWEEP_CRD_FILE

from kubetune_api.constants import CRD_NAME, PLURAL
from kubetune_api.sweep import SWEEP_CRD_NAME


@pytest.fixture(scope="session")
def ftj_crd(cluster: Any) -> str:
    """Install (or update) the committed CRD and wait until the API serves FineTuneJobs.

    It is left installed: other tiers' tests use the same CRD."""
    for path in (CRD_FILE, SWEEP_CRD_FILE):
        cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager=kubetune-tests",
            "-f", str(path),
        )  # fmt: skip
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}",
                    f"crd/{SWEEP_CRD_NAME}")
    deadline = time.monotonic() + 60
    while cluster.kubectl("get", PLURAL, "-A", check=False).returncode != 0:
        assert time.monotonic() < deadline, "FineTuneJobs are not served 60s after the CRD"
        time.sleep(0.5)
    return CRD_NAME


@pytest.fixture(scope="module")
def shared_namespace(cluster: Any, ftj_crd: str) -> Iterator[str]:
    """One namespace for a module's dry runs and read-only objects (no pods run in it)."""
    name = f"t-api-{secrets.token_hex(4)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
