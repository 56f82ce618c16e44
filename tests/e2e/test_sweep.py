"""Sweeps end to end on the local cluster: the operator installed with the chart runs trial
FineTuneJobs of a small LoRA classification fine-tune (a tiny random BERT on a few records, real
training on node-agent pods), ranks them, prunes, and promotes the best model.

- a grid of 3 learning rates x 2 LoRA ranks, 2 at a time: exactly 6 trials, never more than 2
  unfinished, the best the one with the best status.evaluation.best.value among the trials' own
  statuses, and the promoted model loads and gives that value again;
- a random sweep with median pruning and a tpe sweep at once, the operator's leader SIGKILLed in
  the middle of the tpe sweep: no trial lost or duplicated, every trial's parameters are what the
  seed and the results it records give, a trial behind the median is pruned (suspended, marked)
  and both sweeps still run all their trials and succeed.
"""

from __future__ import annotations

import json
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from classify import held_out_metric, sentiment_job
from harness import Jobs, Recorder, wait_for

from kubetune_api.sweep import TrialRow, parse_sweep_spec
from kubetune_operator.suggest import suggest
from kubetune_testbed.chaos import processes
from kubetune_testbed.chart import OperatorRelease
from kubetune_testbed.datasets import write_sentiment_dataset
from kubetune_testbed.s3folders import delete_prefix, download_prefix, upload_folder

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

METRIC = "eval_loss"


@pytest.fixture(scope="module")
def data(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A bucket with the tiny BERT and a few sentiment records; the local copy of the records."""
    from kubetune_testbed.models import ensure_tiny_bert

    s3 = cluster.s3_client()
    bucket = f"sweep-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    upload_folder(s3, Path(ensure_tiny_bert()), bucket, "models/tiny-bert/")
    records = tmp_path_factory.mktemp("sweep-data")
    write_sentiment_dataset(records, held_out=24, train=32)
    upload_folder(s3, records, bucket, "few/")
    yield bucket, records
    delete_prefix(s3, bucket)
    s3.delete_bucket(Bucket=bucket)


def sweep_manifest(name: str, bucket: str, **spec: Any) -> dict[str, Any]:
    """The sweep of a LoRA classifier: 12 steps of 4 records on one worker, evaluated every 4."""
    template = sentiment_job("template", bucket, "models/tiny-bert", "few",
                             method={"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0,
                                                              "targetModules": ["query", "value"]}},
                             training={"maxSteps": 12, "learningRate": 1e-3, "warmupSteps": 0, "evalEverySteps": 4,
                                       "microBatchSize": 4, "globalBatchSize": 4, "maxSeqLength": 32,
                                       "logEverySteps": 4},
                             evaluation={"metric": METRIC}, resources={"nodes": 1, "gpusPerNode": 0},
                             checkpoint={"everySteps": 12, "keepLast": 1},
                             output={"uri": f"s3://{bucket}/trials/{name}/", "select": "best", "mergeLora": True})["spec"]
    template["evaluation"].pop("earlyStopping", None)
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSweep", "metadata": {"name": name},
            "spec": {"template": template, **spec}}


def sweep_status(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "fts", name, "-n", ns, "-o", "json").stdout
    return dict(json.loads(out).get("status") or {})


def wait_sweep(cluster: Any, jobs: Jobs, name: str, timeout: float) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        status = sweep_status(cluster, jobs.ns, name)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    try:
        return dict(wait_for(finished, timeout=timeout, what=f"sweep {name} to finish", interval=2))
    except AssertionError as e:
        trials = cluster.kubectl("get", "ftj", "-n", jobs.ns, "-o", "wide", check=False).stdout
        raise AssertionError(f"{e}\n{json.dumps(sweep_status(cluster, jobs.ns, name), indent=1)}\n{trials}") from None


def most_unfinished_at_once(versions: list[dict[str, Any]]) -> int:
    """From every version of every trial, in order: the most trials created and not finished at once."""
    phase: dict[str, str] = {}
    most = 0
    for obj in versions:
        meta = obj["metadata"]
        pruned = "kubetune.io/pruned" in (meta.get("annotations") or {})
        phase[meta["name"]] = "Pruned" if pruned else (obj.get("status") or {}).get("phase", "Pending")
        most = max(most, sum(1 for p in phase.values() if p not in ("Succeeded", "Failed", "Pruned")))
    return most


def trial_statuses(jobs: Jobs, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: jobs.status(n) for n in names}


def test_a_grid_sweep_runs_six_trials_two_at_a_time_and_promotes_the_best(
        cluster: Any, e2e: Jobs, data: tuple[str, Path], tmp_path: Path) -> None:
    bucket, records = data
    sweep = sweep_manifest(
        "grid", bucket,
        parameters=[{"path": "training.learningRate", "values": [3e-4, 3e-3, 3e-2]},
                    {"path": "method.lora.r", "values": [4, 8]}],
        algorithm={"type": "grid"}, parallelism=2, promote={"uri": f"s3://{bucket}/best/grid/"})
    recorder = Recorder(cluster, e2e.ns, tmp_path / "trials.json")
    cluster.kubectl("apply", "-n", e2e.ns, "-f", "-", input=json.dumps(sweep))
    status = wait_sweep(cluster, e2e, "grid", timeout=900)
    versions = recorder.stop()

    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    names = [f"grid-{n}" for n in range(6)]
    trials = cluster.kubectl("get", "ftj", "-n", e2e.ns, "-l", "kubetune.io/sweep=grid", "-o", "name").stdout.split()
    assert sorted(trials) == sorted(f"finetunejob.kubetune.io/{n}" for n in names)
    assert most_unfinished_at_once(versions) == 2
    assert status["counts"] == {"created": 6, "running": 0, "succeeded": 6, "failed": 0, "pruned": 0}
    assert {tuple(sorted(r["parameters"].items())) for r in status["trials"]} == {
        (("method.lora.r", r), ("training.learningRate", lr)) for lr in (3e-4, 3e-3, 3e-2) for r in (4, 8)}

    # The best, checked against the trials' own statuses.
    own = trial_statuses(e2e, names)
    values = {n: s["evaluation"]["best"]["value"] for n, s in own.items()}
    assert all(s["evaluation"]["metric"] == METRIC for s in own.values())
    best_name = min(values, key=values.__getitem__)
    assert status["best"]["name"] == best_name and status["best"]["value"] == values[best_name]
    table = cluster.kubectl("get", "fts", "grid", "-n", e2e.ns).stdout.splitlines()
    row = table[1].split()
    assert row[1:3] == ["Succeeded", "6/6"] and float(row[3]) == pytest.approx(values[best_name]) and row[4] == best_name
    reasons = {e["reason"] for e in json.loads(cluster.kubectl(
        "get", "events", "-n", e2e.ns, "--field-selector", "involvedObject.kind=FineTuneSweep", "-o", "json").stdout)["items"]}
    assert {"TrialCreated", "TrialSucceeded", "NewBest", "Promoted"} <= reasons

    # The promoted model loads and gives the same metric; sweep-result.json names the trial.
    s3 = cluster.s3_client()
    download_prefix(s3, bucket, "best/grid/", tmp_path / "best")
    result = json.loads((tmp_path / "best" / "sweep-result.json").read_text())
    assert (result["trial"], result["metric"], result["value"]) == (best_name, METRIC, values[best_name])
    assert result["parameters"] == status["best"]["parameters"]
    assert not any(f.startswith("checkpoints/") for f in result["files"])
    recomputed = held_out_metric(tmp_path / "best", records / "eval.jsonl", METRIC, 4, 32)
    assert recomputed == pytest.approx(values[best_name], rel=1e-4)

    # Deleting the sweep deletes its trials (the garbage collector, through their owner); their
    # models stay in storage.
    cluster.kubectl("delete", "fts", "grid", "-n", e2e.ns)
    wait_for(lambda: not cluster.kubectl("get", "ftj", "-n", e2e.ns, "-l", "kubetune.io/sweep=grid",
                                         "-o", "name").stdout.strip(), timeout=60, what="the trials to go")
    kept = s3.list_objects_v2(Bucket=bucket, Prefix=f"trials/grid/{best_name}/").get("KeyCount", 0)
    assert kept > 0


@pytest.mark.long  # two sweeps of 6 trials: 5 minutes here (tests/operator/test_sweepplan.py covers the logic)
def test_a_random_sweep_prunes_and_a_tpe_sweep_survives_its_operator_being_killed(
        cluster: Any, e2e: Jobs, data: tuple[str, Path], release: OperatorRelease) -> None:
    """Two sweeps at once of a full fine-tune that learns its own records (eval = train): a 1e-6
    learning rate leaves the loss where it starts, 5e-3 brings it down within 4 steps."""
    bucket, _ = data
    memorize = {"method": {"type": "full"}, "dataset": {"eval": f"s3://{bucket}/few/train.jsonl"}}
    parameters = [{"path": "training.learningRate", "values": [1e-6, 5e-3]},
                  {"path": "training.warmupSteps", "intRange": {"min": 0, "max": 2, "step": 2}}]
    pruning = {"type": "median", "minTrials": 2, "startStep": 4}
    # Seed 7 draws 5e-3 for trials 0, 1 and 2 and 1e-6 for trial 3 (and 5): trial 3 starts once two
    # trials have finished, and falls behind their median at its first evaluation. (The median rule
    # may prune a 5e-3 trial too: any trial behind the median of the finished ones goes.)
    random = sweep_manifest("rnd", bucket, parameters=parameters, algorithm={"type": "random", "seed": 7},
                            maxTrials=6, parallelism=2, pruning=pruning)
    tpe = sweep_manifest("tpe", bucket, parameters=parameters, algorithm={"type": "tpe", "seed": 3},
                         maxTrials=6, parallelism=2, pruning=pruning)
    for sweep in (random, tpe):
        sweep["spec"]["template"]["method"] = memorize["method"]
        sweep["spec"]["template"]["dataset"]["eval"] = memorize["dataset"]["eval"]
        sweep["spec"]["template"]["output"]["mergeLora"] = False
        cluster.kubectl("apply", "-n", e2e.ns, "-f", "-", input=json.dumps(sweep))

    def trials_done(name: str, n: int) -> bool:
        counts = sweep_status(cluster, e2e.ns, name).get("counts") or {}
        return counts.get("succeeded", 0) + counts.get("pruned", 0) + counts.get("failed", 0) >= n

    # SIGKILL of the operator's leader with the tpe sweep in the middle: 2 of its 6 trials done.
    wait_for(lambda: trials_done("tpe", 2), timeout=600, what="two trials of the tpe sweep to finish", interval=2)
    leader = release.leader()
    killed = [p.pid for p in processes.operator_processes(leader) if processes.signal_pid(p.pid, signal.SIGKILL)]
    assert killed, f"no process of the leader {leader} found"
    assert not trials_done("tpe", 6)
    statuses = {name: wait_sweep(cluster, e2e, name, timeout=900) for name in ("rnd", "tpe")}

    items = json.loads(cluster.kubectl("get", "ftj", "-n", e2e.ns, "-o", "json").stdout)["items"]
    for name, status in statuses.items():
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
        rows = [TrialRow.model_validate(r) for r in status["trials"]]
        assert [r.number for r in rows] == list(range(6))
        trials = sorted(t["metadata"]["name"] for t in items if t["metadata"]["labels"]["kubetune.io/sweep"] == name)
        assert trials == [f"{name}-{n}" for n in range(6)]  # none lost, none twice
        # Every suggestion is what the seed and the results it saw give: the state survived the kill.
        spec = parse_sweep_spec(next(s for s in (random, tpe) if s["metadata"]["name"] == name)["spec"])
        by_number = {r.number: r for r in rows}
        for row in rows:
            assert suggest(spec, row.number, [by_number[n] for n in row.basis or ()]) == (row.parameters, row.basis)
        pruned = [r for r in rows if r.phase == "Pruned"]
        print(name, [(r.name, r.parameters, r.phase, r.value, r.message) for r in rows])
        for row in pruned:  # stopped: suspended, no pods, marked with the numbers
            job = next(t for t in items if t["metadata"]["name"] == row.name)
            assert job["spec"]["runPolicy"]["suspend"] is True
            assert "worse than the median" in job["metadata"]["annotations"]["kubetune.io/pruned"]
            assert job["status"]["phase"] == "Suspended" and not e2e.pods(row.name)
        assert status["counts"]["pruned"] == len(pruned) and status["counts"]["created"] == 6
        assert status["best"]["parameters"]["training.learningRate"] == 5e-3
        if name == "rnd":
            assert pruned, json.dumps(status["trials"], indent=1)
    assert any(row["basis"] for row in statuses["tpe"]["trials"][2:])  # tpe learned from finished trials
