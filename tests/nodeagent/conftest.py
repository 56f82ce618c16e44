"""The node agent's cluster tests share `pods`: kubectl on plain Pods in the test's namespace."""

from __future__ import annotations

from typing import Any

import pytest
from test_nodeagent_pods import Pods


@pytest.fixture
def pods(cluster: Any, namespace: str) -> Pods:
    return Pods(cluster, namespace)
