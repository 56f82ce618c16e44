"""The fault-injection suite, short: nine faults, one of each kind but stop-rank, into two real training jobs.

`make chaos` runs the full suite (100+ faults); this is its short version in
`make test`: the same code (kubetune_testbed.chaos), the operator installed
with the chart, the tiny Llama trained on the node agent's pods, the S3 traffic
through the fault proxy. It asserts what the suite's table tells a user.

stop-rank is left out here: with one worker per job, nothing but the
operator's backstop (progressDeadlineSeconds + 120 s) finds a frozen rank,
which is minutes; tests/e2e's frozen-rank test covers it with two workers.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from kubetune_testbed.chaos import KINDS, Options, Suite

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SHORT_KINDS = tuple(k for k in KINDS if k != "stop-rank")
SHORT = Options(seed=15, faults=len(SHORT_KINDS), kinds=SHORT_KINDS, jobs=2, nodes=1, max_steps=30, every_steps=5, time_limit=360)


def test_a_fault_of_every_kind_loses_no_commit_no_pod_and_no_secret(cluster: Any) -> None:
    started = time.monotonic()
    report = Suite(cluster.local, SHORT).run()
    took = time.monotonic() - started  # cleanup included
    print(report.table())
    table = "\n" + report.table()

    assert len(report.faults) == SHORT.faults, table
    assert sorted(f.kind for f in report.faults) == sorted(SHORT_KINDS), table  # each kind once
    assert [j.get("status", {}).get("phase") for j in report.jobs] == ["Succeeded"] * len(report.jobs), table
    assert report.checkpoints.manifests > 0 and report.checkpoints.problems == [], table
    assert report.over_bound == [], table
    assert report.orphans == [] and report.duplicates == [], table
    assert report.secrets == [], table
    assert took <= SHORT.time_limit, table
    assert report.ok, table
