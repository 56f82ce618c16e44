"""End to end on the local cluster: `helm install` of the chart -> `kubectl apply` of
examples/quickstart.yaml -> the operator's leader -> worker pods that the node agent really runs ->
torchrun over the pods' DNS names -> the trainer with DeepSpeed and gloo -> checkpoints and the
model in MinIO -> status on the FineTuneJob.

Nothing is faked: the operator is the chart's, with its default values (two replicas electing a
leader through a Lease, pods run from the operator image's entrypoint with in-cluster
credentials); the only change to the quick start is a tiny random Llama (same tokenizer as
SmolLM2) instead of the 135M model, so each run takes seconds of training; `make demo` runs the
quick start as it is.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from harness import (
    Jobs,
    Recorder,
    committed_steps,
    diagnose,
    kubectl_wait,
    logs,
    quickstart,
    wait_for,
)

from kubetune_api.constants import (
    REASON_BACKOFF_LIMIT_EXCEEDED,
    REASON_CREATING_WORKERS,
    REASON_RESTARTING,
    REASON_TRAINING_COMPLETE,
)
from kubetune_api.timestamps import parse_timestamp, utc_now
from kubetune_testbed.chaos.processes import trainer_pids
from kubetune_testbed.chart import OperatorRelease
from kubetune_testbed.s3folders import download_prefix
from kubetune_trainer.logs import parse_log_lines

pytestmark = pytest.mark.cluster




def test_the_chart_installs_two_ready_operator_pods_one_leading(release: OperatorRelease) -> None:
    pods = json.loads(release.kubectl("get", "pods", "-o", "json").stdout)["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    assert wait_for(release.leader, what="a replica to hold the Lease") in {p["metadata"]["name"] for p in pods}


def test_quickstart_runs_two_nodes_to_success(cluster: Any, e2e: Jobs, store: str, release: OperatorRelease,
                                              tmp_path: Path) -> None:
    e2e.apply(quickstart("qs", store, training={"maxSteps": 6}, checkpoint={"everySteps": 3, "keepLast": 2}))
    done = kubectl_wait(cluster, e2e.ns, "qs", "Succeeded", timeout=600)
    assert done.returncode == 0, diagnose(cluster, e2e, "qs") + done.stderr

    status = e2e.status("qs")
    assert status["phase"] == "Succeeded"
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 6
    assert status["progressText"] == "6/6"
    assert status["checkpoints"]["latest"]["step"] == 6
    assert status["checkpoints"]["latest"]["uri"] == f"s3://{store}/output/qs/checkpoints/step-00000006/"
    assert status["checkpoints"]["committed"] == 2
    assert status["output"]["uri"] == f"s3://{store}/output/qs/"
    assert status["restarts"] == {"infrastructure": 0, "application": 0, "hang": 0}

    # The preflight ran first, without a GPU, and its tokenized data set is what the workers read.
    preflight = status["preflight"]
    assert preflight["result"] == "Succeeded" and preflight["records"] > 0 and preflight["totalSteps"] == 6
    assert preflight["cacheUri"].startswith(f"s3://{store}/kubetune-cache/")
    assert preflight["memoryPerGpuBytes"] > 0

    # The preflight pod, then two workers: two ranks in one process group, over the pods' own addresses.
    pods = e2e.pods("qs")
    assert [p["metadata"]["name"] for p in pods] == ["qs-preflight", "qs-worker-0", "qs-worker-1"]
    assert all(p["status"]["phase"] == "Succeeded" for p in pods)
    assert "nvidia.com/gpu" not in json.dumps(pods[0]["spec"]["containers"][0]["resources"])
    workers = pods[1:]
    assert len({p["status"]["podIP"] for p in workers}) == 2
    events = parse_log_lines(logs(cluster, e2e.ns, "qs-worker-0"))
    assert [e["world_size"] for e in events if e["event"] == "rendezvous"] == [2]
    assert [e["source"] for e in events if e["event"] == "data_loaded"] == ["cache"]
    assert [e["step"] for e in events if e["event"] == "eval"] == [0, 6]  # the base model's loss, then after

    # S3: the committed checkpoints (keepLast 2 of steps 3 and 6) and the published model.
    s3 = cluster.s3_client()
    assert committed_steps(s3, store, "output/qs/checkpoints/") == [3, 6]
    files = download_prefix(s3, store, "output/qs/", tmp_path / "out")
    assert {"manifest.json", "model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["step"] == 6

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    prompt = tokenizer("Hello", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 5

    # `kubectl logs` of the operator's leader shows what it did for the job.
    log = release.logs(release.leader())
    assert f"{e2e.ns}/qs: {REASON_CREATING_WORKERS}" in log
    assert f"{e2e.ns}/qs: {REASON_TRAINING_COMPLETE}" in log


def test_a_deleted_worker_restarts_the_gang_once_even_as_the_operator_leader_is_deleted(
        cluster: Any, e2e: Jobs, store: str, release: OperatorRelease, tmp_path: Path) -> None:
    # About 0.7 s a step for the tiny model on two CPU cores: a commit after some 20 s, then 30 s more.
    e2e.apply(quickstart("resume", store, training={"maxSteps": 50, "evalEverySteps": 25},
                         checkpoint={"everySteps": 10, "keepLast": 2}))
    pods = Recorder(cluster, e2e.ns, tmp_path / "pods.json", kind="pods")

    def committed() -> int:
        latest = (e2e.status("resume").get("checkpoints") or {}).get("latest") or {}
        return int(latest.get("step", 0))

    seen = wait_for(committed, timeout=300, what="a first committed checkpoint", interval=0.5)
    assert seen < 50, "training ended before a worker could be deleted"
    # The operator's leader and a worker, in the same second.
    leader = release.leader()
    release.kubectl("delete", "pod", leader, "--wait=false")
    cluster.kubectl("delete", "pod", "-n", e2e.ns, "resume-worker-1", "--wait=false")
    deleted = time.monotonic()
    successor = wait_for(lambda: (holder := release.leader()) not in ("", leader) and holder, timeout=15,
                         what="the standby to take the Lease within the lease duration (15 s)", interval=0.2)
    print(f"{successor} took the Lease {time.monotonic() - deleted:.1f} s after {leader} was deleted")

    done = kubectl_wait(cluster, e2e.ns, "resume", "Succeeded", timeout=600)
    seen_pods = pods.stop()
    assert done.returncode == 0, diagnose(cluster, e2e, "resume") + done.stderr
    status = e2e.status("resume")
    assert status["restarts"] == {"infrastructure": 1, "application": 0, "hang": 0}
    assert status["workers"]["attempt"] == 2  # 1, plus the one restart
    assert status["progress"]["step"] == 50
    resumed = status["checkpoints"]["resumedFrom"]
    # The deleted worker's SIGTERM stopped both ranks after one step, which they committed: rank 0
    # (never signalled) says so in its termination message, and the new gang resumed from there.
    stopped = {(c.get("state") or {}).get("terminated", {}).get("message", "") for p in seen_pods
               if p["metadata"]["name"] == "resume-worker-0" and p["metadata"]["labels"]["kubetune.io/attempt"] == "1"
               for c in p.get("status", {}).get("containerStatuses") or ()}
    step = resumed["step"]
    # (Or rank 0 met the new leader's own SIGTERM of the gang restart first: the same step, committed.)
    assert {f"Stopped at step {step} by another rank's SIGTERM: checkpoint step-{step:08d} committed",
            f"Stopped at step {step} by SIGTERM: checkpoint step-{step:08d} committed"} & stopped, stopped
    assert step >= seen
    assert resumed["uri"] == f"s3://{store}/output/resume/checkpoints/step-{resumed['step']:08d}/"

    # Nothing duplicated: two workers per attempt, one preflight, one Restarting event, one gang restart.
    created = {p["metadata"]["uid"]: p["metadata"]["labels"].get("kubetune.io/attempt", "preflight")
               for p in seen_pods}
    assert Counter(created.values())["preflight"] == 1, created
    created = {uid: attempt for uid, attempt in created.items() if attempt != "preflight"}
    assert Counter(created.values()) == {"1": 2, "2": 2}, created
    reasons = Counter(e["reason"] for e in e2e.events("resume"))
    assert reasons[REASON_RESTARTING] == 1 and reasons[REASON_TRAINING_COMPLETE] == 1, reasons
    assert f"{e2e.ns}/resume: {REASON_RESTARTING}" in release.logs(successor)

    # The new rank 0 says so in its log, and started from that step, not from 0.
    events = parse_log_lines(logs(cluster, e2e.ns, "resume-worker-0"))
    assert [e["step"] for e in events if e["event"] == "resumed"] == [resumed["step"]]
    assert [e["start_step"] for e in events if e["event"] == "train_start"] == [resumed["step"]]


def test_a_frozen_rank_is_a_hang_and_the_job_resumes_from_its_last_commit(cluster: Any, e2e: Jobs, store: str,
                                                                         tmp_path: Path) -> None:
    e2e.apply(quickstart("frozen", store, training={"maxSteps": 40}, checkpoint={"everySteps": 5, "keepLast": 2},
                         runPolicy={"progressDeadlineSeconds": 15}))
    versions = Recorder(cluster, e2e.ns, tmp_path / "jobs.json")

    def committed() -> int:
        latest = (e2e.status("frozen").get("checkpoints") or {}).get("latest") or {}
        return int(latest.get("step", 0))

    seen = wait_for(committed, timeout=300, what="a first committed checkpoint", interval=0.5)
    pids = wait_for(lambda: len(found := trainer_pids(e2e.ns, "frozen")) == 2 and found, timeout=10,
                    what="the two training processes")
    os.kill(pids[1], signal.SIGSTOP)  # rank 1 stops dead, sockets open: rank 0 waits in a collective
    frozen = utc_now()
    wait_for(lambda: not os.path.exists(f"/proc/{pids[1]}"), timeout=120, what="the frozen process to be killed")

    done = kubectl_wait(cluster, e2e.ns, "frozen", "Succeeded", timeout=600)
    assert done.returncode == 0, diagnose(cluster, e2e, "frozen") + done.stderr
    # Stalled with reason Hang from the restart until the new workers ran, within the deadline and seconds.
    history = versions.stop()
    stalled = [c for job in history for c in job.get("status", {}).get("conditions", [])
               if c["type"] == "Stalled" and c["status"] == "True"]
    assert stalled and {c["reason"] for c in stalled} == {"Hang"}, stalled
    took = (parse_timestamp(stalled[0]["lastTransitionTime"]) - frozen).total_seconds()
    print(f"Stalled/Hang {took:.0f} s after rank 1 was frozen (progressDeadlineSeconds 15)")
    assert took < 15 + 45, "the watchdog fires at the deadline; the report and the restart take seconds"
    status = e2e.status("frozen")
    assert status["restarts"] == {"infrastructure": 0, "application": 0, "hang": 1}
    resumed = status["checkpoints"]["resumedFrom"]["step"]
    # The newest commit before the restart: every 5 steps, or a new best at an evaluation (every 8).
    newest = max(int(((job.get("status") or {}).get("checkpoints") or {}).get("latest", {}).get("step", 0))
                 for job in history if "resumedFrom" not in ((job.get("status") or {}).get("checkpoints") or {}))
    assert resumed == newest and resumed >= seen, (resumed, newest, seen)
    # Rank 0's report: in storage, naming the collective it waited in; the Event points at it.
    key = "output/frozen/checkpoints/diagnostics/attempt-1/rank-0.txt"
    report = cluster.s3_client().get_object(Bucket=store, Key=key)["Body"].read().decode()
    assert "waiting in: torch.distributed." in report and "Thread MainThread" in report, report[:2000]
    hangs = [e["message"] for e in e2e.events("frozen") if e["reason"] == "Hang"]
    assert len(hangs) == 1 and "(rank 0, waiting in torch.distributed." in hangs[0], hangs
    assert f"s3://{store}/{key}" in hangs[0]


def test_missing_data_fails_the_preflight_and_no_worker_pod_is_ever_created(
        cluster: Any, e2e: Jobs, store: str, tmp_path: Path) -> None:
    pods = Recorder(cluster, e2e.ns, tmp_path / "pods.json", kind="pods")
    e2e.apply(quickstart("nodata", store, dataset={"train": f"s3://{store}/data/missing.jsonl"}))
    done = kubectl_wait(cluster, e2e.ns, "nodata", "Failed", timeout=300)
    time.sleep(2)  # a worker created after the verdict would be in the watch by now
    seen = {p["metadata"]["name"] for p in pods.stop()}
    assert done.returncode == 0, diagnose(cluster, e2e, "nodata") + done.stderr
    status = e2e.status("nodata")
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Failed"] == "PreflightFailed"
    assert status["message"] == f"preflight failed: s3://{store}/data/missing.jsonl: dataset file not found"
    assert status["preflight"]["result"] == "Failed"
    assert seen == {"nodata-preflight"}, seen
    assert "restarts" not in status or status["restarts"] == {"infrastructure": 0, "application": 0, "hang": 0}


def test_a_trainer_failure_fails_the_job_with_its_reason_after_backoff(
        cluster: Any, e2e: Jobs, store: str) -> None:
    # Without the preflight, which would have found the missing file before any worker (the test above).
    e2e.apply(quickstart("baddata", store, dataset={"train": f"s3://{store}/data/missing.jsonl"},
                         runPolicy={"backoffLimit": 1}, preflight={"enabled": False}))
    done = kubectl_wait(cluster, e2e.ns, "baddata", "Failed", timeout=600)
    assert done.returncode == 0, diagnose(cluster, e2e, "baddata") + done.stderr

    status = e2e.status("baddata")
    assert status["phase"] == "Failed"
    assert status["restarts"] == {"infrastructure": 0, "application": 1, "hang": 0}  # backoffLimit 1: one retry
    # The trainer's one line, through the termination message, in the status and an Event.
    assert "missing.jsonl" in status["message"], status["message"]
    assert "\n" not in status["message"]
    events = e2e.events("baddata")
    assert any(e["type"] == "Warning" and e["reason"] == REASON_BACKOFF_LIMIT_EXCEEDED and "missing.jsonl" in e["message"]
               for e in events), events
    # No retry beyond the limit: nothing runs and no third attempt appears.
    wait_for(lambda: all(p["status"].get("phase") in ("Succeeded", "Failed") for p in e2e.pods("baddata")),
             timeout=60, what="every worker pod to end")
    assert e2e.status("baddata")["workers"]["attempt"] == 2
