"""Pre-emption by Kueue without lost work, end to end: the chart with kueue.enabled=true, a real
Kueue, and training that the node agent really runs.

A low-priority job trains with checkpoint.everySteps far beyond its length, so only the graceful
save at eviction can explain where it resumes. A high-priority job that needs its quota evicts it:
the low job's worker commits the step it was running, the job goes back to Queued, the high job
runs and succeeds, and the low job is admitted again and resumes from exactly that step.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from harness import (
    Jobs,
    Kueue,
    Recorder,
    committed_steps,
    deep_merge,
    diagnose,
    kubectl_wait,
    logs,
    queued_job,
    quickstart,
    wait_for,
)

from kubetune_api.timestamps import parse_timestamp
from kubetune_testbed.chaos.processes import trainer_pids
from kubetune_testbed.chart import OperatorRelease
from kubetune_testbed.nodes import NODE_AGENT_NODE
from kubetune_trainer.logs import parse_log_lines

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def release_values() -> tuple[str, ...]:
    return ("kueue.enabled=true",)


def one_node(name: str, store: str, steps: int) -> dict[str, Any]:
    """The quick start on one node (one GPU, four sequences a step), a checkpoint only at the end."""
    return quickstart(name, store, resources={"nodes": 1, "gpusPerNode": 1},
                      training={"maxSteps": steps, "globalBatchSize": 4, "evalEverySteps": 1000},
                      checkpoint={"everySteps": 1000, "keepLast": 2}, output={"mergeLora": False})


def losses(text: str) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in parse_log_lines(text) if e["event"] == "step"}


def test_a_preempted_job_commits_its_step_waits_and_resumes_from_it(
        cluster: Any, e2e: Jobs, store: str, release: OperatorRelease, kueue: Kueue, tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    queue = kueue.queue(f"agent-{tag}", gpus=1, node_labels={"kubernetes.io/hostname": NODE_AGENT_NODE},
                        preempt_lower_priority=True)
    low, high = kueue.priority(f"low-{tag}", 100), kueue.priority(f"high-{tag}", 1000)
    history = Recorder(cluster, e2e.ns, tmp_path / "jobs.json")
    pods = Recorder(cluster, e2e.ns, tmp_path / "pods.json", kind="pods")

    e2e.apply(queued_job(one_node("low", store, 60), queue, low))
    wait_for(lambda: ((e2e.status("low").get("progress") or {}).get("step") or 0) >= 5, timeout=300,
             what="the low-priority job training", interval=0.5)
    # The high job skips its preflight (the low one ran its own before it was queued): its ~8 s here would
    # let the low job finish its 60 steps before it is pre-empted.
    e2e.apply(deep_merge(queued_job(one_node("high", store, 4), queue, high), {"spec": {"preflight": {"enabled": False}}}))

    done = kubectl_wait(cluster, e2e.ns, "high", "Succeeded", timeout=400)
    assert done.returncode == 0, diagnose(cluster, e2e, "high") + diagnose(cluster, e2e, "low")
    done = kubectl_wait(cluster, e2e.ns, "low", "Succeeded", timeout=400)
    seen_jobs, seen_pods = history.stop(), pods.stop()
    assert done.returncode == 0, diagnose(cluster, e2e, "low")

    # The low job's worker stopped at step N, committed it, and said so in its termination message.
    messages = [c["state"]["terminated"].get("message", "") for p in seen_pods
                if p["metadata"]["name"] == "low-worker-0" and p["metadata"]["labels"]["kubetune.io/attempt"] == "1"
                for c in p.get("status", {}).get("containerStatuses") or () if "terminated" in (c.get("state") or {})]
    stop = next((m for m in messages if m.startswith("Stopped at step")), "")
    match = re.match(r"Stopped at step (\d+) by SIGTERM: checkpoint step-(\d+) committed", stop)
    assert match, messages
    step = int(match[1])
    first = [p for p in seen_pods if p["metadata"]["name"] == "low-worker-0"
             and p["metadata"]["labels"]["kubetune.io/attempt"] == "1"]
    asked = min(parse_timestamp(p["metadata"]["deletionTimestamp"]) for p in first if p["metadata"].get("deletionTimestamp"))
    exited = max(parse_timestamp(c["state"]["terminated"]["finishedAt"]) for p in first
                 for c in p.get("status", {}).get("containerStatuses") or () if "terminated" in (c.get("state") or {}))
    print(f"pre-empted at step {step}: {(exited - asked).total_seconds():.0f} s from the pod's deletion "
          "(SIGTERM) to its exit with the checkpoint committed")

    # The low job went back to Queued, evicted by Kueue, and never had a worker while the high one ran.
    low_versions = [j for j in seen_jobs if j["metadata"]["name"] == "low"]
    evicted = [j for j in low_versions if (j.get("status") or {}).get("phase") == "Queued"
               and "evicted by Kueue (Preempted" in j["status"].get("message", "")]
    assert evicted, [(j.get("status") or {}).get("message") for j in low_versions]
    reported = max(((j.get("status") or {}).get("progress") or {}).get("step") or 0
                   for j in low_versions[:low_versions.index(evicted[0])])
    assert reported <= step, (reported, step)
    print(f"last progress reported before the eviction: step {reported}; resumed from step {step}: 0 steps lost")  # the stop step is at or after the last step it reported

    status = e2e.status("low")
    assert status["restarts"] == {"infrastructure": 1, "application": 0, "hang": 0}
    resumed = status["checkpoints"]["resumedFrom"]
    assert resumed["step"] == step and resumed["uri"].endswith(f"/checkpoints/step-{step:08d}/")
    assert status["progress"]["step"] == 60
    reasons = [e["reason"] for e in e2e.events("low")]
    assert "Evicted" in reasons and reasons.count("Admitted") == 2, reasons
    wl = kueue.workload("low")
    finished = next(c for c in wl["status"]["conditions"] if c["type"] == "Finished")
    assert finished["status"] == "True" and finished["reason"] == "Succeeded"

    # Resumed where it stopped: no step trained twice, none skipped, and the same losses as a run
    # that was never interrupted.
    after = losses(logs(cluster, e2e.ns, "low-worker-0"))
    assert min(after) == step + 1 and max(after) == 60
    e2e.apply(one_node("reference", store, 60))
    done = kubectl_wait(cluster, e2e.ns, "reference", "Succeeded", timeout=400)
    assert done.returncode == 0, diagnose(cluster, e2e, "reference")
    reference = losses(logs(cluster, e2e.ns, "reference-worker-0"))
    for s in sorted(after):
        assert after[s] == pytest.approx(reference[s], rel=1e-4), s


@pytest.mark.parametrize("grace", [
    pytest.param(300, id="graceful"),
    # No time to save: SIGKILL at once. The step reached is lost, the previous commit stands.
    pytest.param(0, id="no-grace", marks=pytest.mark.long),
])
def test_suspend_commits_the_current_step_unless_the_grace_is_too_short(
        cluster: Any, e2e: Jobs, store: str, release: OperatorRelease, tmp_path: Path, grace: int) -> None:
    s3 = cluster.s3_client()
    every = 1000 if grace else 5
    job = deep_merge(one_node("pause", store, 60), {"spec": {
        "checkpoint": {"everySteps": every}, "runPolicy": {"terminationGracePeriodSeconds": grace}}})
    pods = Recorder(cluster, e2e.ns, tmp_path / "pods.json", kind="pods")
    e2e.apply(job)
    prefix = "output/pause/checkpoints/"
    if grace:
        wait_for(lambda: ((e2e.status("pause").get("progress") or {}).get("step") or 0) >= 5, timeout=300,
                 what="the job training", interval=0.5)
    else:
        wait_for(lambda: committed_steps(s3, store, prefix), timeout=300, what="a periodic commit", interval=0.5)
    e2e.patch_spec("pause", {"runPolicy": {"suspend": True}})
    wait_for(lambda: e2e.status("pause").get("phase") == "Suspended" and not e2e.pods("pause"), timeout=120,
             what="pause Suspended with its worker gone")
    # With a grace of 0 the pod object goes at once, before its processes: wait for them too.
    wait_for(lambda: not trainer_pids(e2e.ns, "pause"), timeout=60, what="the trainer processes gone")
    before = committed_steps(s3, store, prefix)
    e2e.patch_spec("pause", {"runPolicy": {"suspend": False}})
    done = kubectl_wait(cluster, e2e.ns, "pause", "Succeeded", timeout=400)
    seen = pods.stop()
    assert done.returncode == 0, diagnose(cluster, e2e, "pause")

    # Suspend keeps the attempt (it is no restart): the stopped pod and its successor are both attempt 1.
    messages = [c["state"]["terminated"].get("message", "") for p in seen
                for c in p.get("status", {}).get("containerStatuses") or () if "terminated" in (c.get("state") or {})]
    stopped = next((m for m in messages if m.startswith("Stopped at step")), "")
    resumed = e2e.status("pause")["checkpoints"]["resumedFrom"]["step"]
    if grace:
        match = re.match(r"Stopped at step (\d+) by SIGTERM: checkpoint step-\d+ committed", stopped)
        assert match, messages
        assert before == [int(match[1])] == [resumed]  # the only commit: the one the stop made
    else:
        assert not stopped, messages
        assert before and resumed == before[-1]  # the last periodic commit, intact
    assert min(losses(logs(cluster, e2e.ns, "pause-worker-0"))) == resumed + 1
