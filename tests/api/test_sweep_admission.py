"""FineTuneSweeps at the real API server: the example is accepted, mistakes are refused at
`kubectl apply` naming the field (the same mistakes the parse step names, sweep_cases.py), only
suspend, parallelism and maxTrials change later, and `kubectl get fts` shows the columns."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sweep_cases import IDS, MISTAKES, example_sweep

pytestmark = pytest.mark.cluster

# What the API server says (its own words for schema errors; the models' for CEL rules).
SERVER_WORDS = {
    "unknown-path": 'Unsupported value: "training.learningrate"',
    "string-for-number": "must be of type number",
    "fraction-for-integer": "must be whole numbers for an integer field",
    "number-for-string": "is a string field: give its values as strings",
    "min-above-max": "must be greater than min",
    "parallelism-0": "should be greater than or equal to 1",
    "grid-range": "a grid sweep takes values or intRange",
    "tpe-without-maxTrials": "random and tpe sweeps need maxTrials",
    "two-kinds-of-values": "set exactly one of values, range, intRange, booleans and strings",
    "no-eval": "needs evaluation records",
}


def dry_run(cluster: Any, namespace: str, manifest: dict[str, Any]) -> Any:
    return cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                           input=json.dumps(manifest), check=False)


@pytest.mark.parametrize(("change", "field", "words"), MISTAKES, ids=IDS)
def test_a_mistake_is_refused_at_admission_naming_the_field(
        cluster: Any, shared_namespace: str, change: Any, field: str, words: str, request: Any) -> None:
    case = request.node.callspec.id
    sweep = example_sweep()
    change(sweep["spec"])
    result = dry_run(cluster, shared_namespace, sweep)
    if case not in SERVER_WORDS:
        # A value out of its field's bounds needs the FineTuneJob spec's own checks: the operator
        # fails such a sweep (InvalidSpec) before any trial; the API server admits it.
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode != 0, f"{case} was admitted"
    assert field in result.stderr and SERVER_WORDS[case] in result.stderr, result.stderr


def test_only_suspend_parallelism_and_max_trials_change_after_creation(cluster: Any, shared_namespace: str) -> None:
    sweep = example_sweep()
    sweep["metadata"]["name"] = "changes"
    cluster.kubectl("create", "-n", shared_namespace, "-f", "-", input=json.dumps(sweep))
    try:
        ok = cluster.kubectl("patch", "fts", "changes", "-n", shared_namespace, "--type=merge", "-p",
                             json.dumps({"spec": {"suspend": True, "parallelism": 3, "maxTrials": 4}}), check=False)
        assert ok.returncode == 0, ok.stderr
        refused = cluster.kubectl("patch", "fts", "changes", "-n", shared_namespace, "--type=merge", "-p",
                                  json.dumps({"spec": {"algorithm": {"type": "random", "seed": 1}}}), check=False)
        assert refused.returncode != 0 and "spec.algorithm" in refused.stderr
        assert "only spec.suspend, spec.parallelism and spec.maxTrials may change" in refused.stderr
        table = cluster.kubectl("get", "fts", "-n", shared_namespace).stdout.splitlines()
        assert table[0].split()[:4] == ["NAME", "PHASE", "TRIALS", "BEST"]
    finally:
        cluster.kubectl("delete", "fts", "changes", "-n", shared_namespace, "--wait=false", check=False)
