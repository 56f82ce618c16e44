"""Fixtures for operator tests: a real `python -m kubetune_operator` process against the local cluster."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from harness import Jobs, OperatorProcess
from localcluster import REPO


@pytest.fixture(scope="module")
def operator(cluster: Any, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess({**cluster.env, "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("api", "operator"))}, log)
    op.start()
    yield op
    op.kill(signal.SIGTERM)
    print(f"operator log: {log}")


@pytest.fixture
def jobs(cluster: Any, namespace: str) -> Jobs:
    return Jobs(cluster, namespace)
