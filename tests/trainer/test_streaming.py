"""Real training with checkpoints streaming to MinIO, started the way the operator's pods start it.

Two 'nodes' (one torchrun each, rendezvous on loopback, each with its own
scratch disk), the job handed over as the operator's config.json, the model,
data, checkpoints and output all in S3. What a user would check: checkpoints
are committed with manifests whose files are all there and intact, retention
keeps keepLast, the final model loads with plain transformers and generates,
the FineTuneJob shows progress; a rank killed mid-upload resumes from the last
commit with the same losses; an S3 outage delays commits but not training.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    Launched,
    Minio,
    Run,
    assert_manifests_intact,
    job_reporting_access,
    launch,
    s3_env,
    torchrun_nodes,
    wait_for_event,
    write_jsonl,
)

from kubetune_api import DatasetSpec, StorageSpec, TrainingSpec, parse_spec
from kubetune_operator.children import JobRef, trainer_job
from kubetune_testbed.s3folders import delete_prefix, download_prefix, keys, upload_folder
from kubetune_trainer.data import IGNORE_INDEX, build_datasets, collate
from kubetune_trainer.modeling import load_tokenizer
from kubetune_trainer.settings import Settings
from kubetune_trainer.staging import UriFiles

pytestmark = pytest.mark.cluster

SENTENCES = ["the cat sat on the mat.", "a dog ran in the park.", "my bird can sing a song."]
STEPS = 8
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Stack:
    """A bucket holding the tiny model and a toy corpus, and a namespace, for this module's runs."""

    cluster: Any
    s3: Any
    bucket: str
    namespace: str
    data: Path
    work: Path


def seed_bucket(s3: Any, bucket: str, model_dir: Path, data: Path) -> None:
    s3.create_bucket(Bucket=bucket)
    upload_folder(s3, model_dir, bucket, "models/tiny")
    s3.upload_file(str(data), bucket, "data/train.jsonl")


@pytest.fixture(scope="module")
def stack(cluster: Any, crd: None, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("streaming")
    data = write_jsonl(work / "train.jsonl", [{"text": " ".join([SENTENCES[i % 3]] * 4)} for i in range(48)])
    s3, bucket = cluster.s3_client(), f"trainer-{secrets.token_hex(4)}"
    seed_bucket(s3, bucket, tiny_model_dir, data)
    namespace = f"trainer-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", namespace)
    try:
        yield Stack(cluster, s3, bucket, namespace, data, work)
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        delete_prefix(s3, bucket)
        s3.delete_bucket(Bucket=bucket)


def tiny_spec(bucket: str, prefix: str, endpoint: str, **overrides: Any) -> dict[str, Any]:
    """A valid FineTuneJob spec: 8 steps of the tiny model on 2 CPU 'nodes', checkpoints every 2."""
    spec: dict[str, Any] = {
        "model": {"uri": f"s3://{bucket}/models/tiny/"},
        "dataset": {"train": f"s3://{bucket}/data/train.jsonl", "format": "text", "evalSplit": 0.1},
        "method": {"type": "full", "gradientCheckpointing": True},
        "training": {"maxSteps": STEPS, "learningRate": 1e-2, "warmupSteps": 1, "microBatchSize": 2,
                     "globalBatchSize": 8, "maxSeqLength": 32, "packing": True, "precision": "fp32", "seed": 5,
                     "logEverySteps": 1},
        "deepspeed": {"zeroStage": 2},
        "resources": {"nodes": 2, "gpusPerNode": 0},
        "checkpoint": {"uri": f"s3://{bucket}/{prefix}/ckpt/", "everySteps": 2, "keepLast": 2},
        "output": {"uri": f"s3://{bucket}/{prefix}/out/"},
        "storage": {"endpoint": endpoint, "addressingStyle": "path"},
        "runPolicy": {"suspend": True},  # no operator may start workers for it: these tests are the workers
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def operator_config(path: Path, name: str, namespace: str, spec: dict[str, Any]) -> Path:
    """The config.json the operator mounts into every worker (built by the operator's own code)."""
    body = trainer_job(JobRef(name, namespace, "test"), parse_spec(spec)).to_manifest()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=1))
    return path


def node_envs(work: Path, config: Path, **extra: str) -> list[dict[str, str]]:
    """Each 'node' has its own scratch disk and termination log, as separate pods would."""
    envs = []
    for rank in range(2):
        log = work / f"termination-log-{rank}"
        log.write_text("")
        envs.append({"KUBETUNE_CONFIG": str(config), "KUBETUNE_SCRATCH_DIR": str(work / f"node-{rank}"),
                     "KUBETUNE_TERMINATION_LOG": str(log), **extra})
    return envs


def assert_ok(run: Run) -> None:
    assert run.returncodes and all(rc == 0 for rc in run.returncodes), run.output[-6000:]


def held_out_loss(model_dir: Path, train: Path, seed: int = 5) -> float:
    """Eval loss of an exported model on the run's held-out records (evalSplit 0.1), plain transformers."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(model_dir))
    # The run's own split of its records (the folder of `train` plays a mounted claim).
    dataset = DatasetSpec(train=f"pvc://{train.parent.name}/{train.name}", format="text", eval_split=0.1)
    training = TrainingSpec(max_steps=1, max_seq_length=32, packing=True, seed=seed)
    files = UriFiles(Settings(pvc_root=str(train.parent.parent)), StorageSpec())
    samples = build_datasets(dataset, training, tokenizer, max_positions=None, files=files).eval
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    batch = collate(samples, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(),
                                                   ignore_index=IGNORE_INDEX))


def generates(model_dir: Path) -> str:
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    inputs = tokenizer("the cat", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    return str(tokenizer.decode(out[0][inputs["input_ids"].shape[1]:]))


def exported_model(s3: Any, bucket: str, prefix: str, dest: Path) -> Path:
    """Download the output, checking it against its own manifest."""
    import hashlib

    download_prefix(s3, bucket, prefix, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    names = {f["name"] for f in manifest["files"]}
    assert {"config.json", "tokenizer.json"} <= names and any(n.endswith(".safetensors") for n in names)
    for entry in manifest["files"]:
        assert hashlib.sha256((dest / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]
    return dest


# --- ZeRO-2, reporting to a FineTuneJob


@pytest.fixture(scope="module")
def zero2(stack: Stack) -> Run:
    cluster, name = stack.cluster, "zero2"
    spec = tiny_spec(stack.bucket, "zero2", cluster.local.s3_url)
    manifest = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                "metadata": {"name": name, "namespace": stack.namespace}, "spec": spec}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    work = stack.work / name
    access = job_reporting_access(cluster, stack.namespace, name, work / "serviceaccount")
    config = operator_config(work / "config.json", name, stack.namespace, spec)
    return launch(torchrun_nodes(None), envs=node_envs(work, config, **s3_env(cluster), **access,
                                                       KUBETUNE_STATUS_INTERVAL_SECONDS="1"))


def test_two_nodes_zero2_commit_checkpoints_and_export_a_plain_model(stack: Stack, zero2: Run) -> None:
    assert_ok(zero2)
    setup = zero2.of("setup")[0]
    assert (setup["world_size"], setup["gradient_accumulation"]) == (2, 2)
    losses = zero2.losses()
    assert sorted(losses) == list(range(1, STEPS + 1)) and losses[STEPS] < 0.7 * losses[1], losses
    # Both ranks uploaded their own shards; rank 0 committed; retention kept the newest two.
    assert {e["rank"] for e in zero2.of("checkpoint_uploaded")} == {0, 1}
    assert zero2.of("checkpoint_committed")[-1]["step"] == STEPS
    committed = assert_manifests_intact(stack.s3, stack.bucket, "zero2/ckpt/")
    assert len(committed) == 2 and committed[-1] == STEPS  # a checkpoint still waiting may be superseded
    folders = {k.split("/")[2] for k in keys(stack.s3, stack.bucket, "zero2/ckpt/")}
    steps = {f"step-{s:08d}" for s in committed}
    assert {f for f in folders if f.startswith("step-")} == steps  # nothing uncommitted is left behind
    assert folders - steps == {"metrics.jsonl", "tensorboard"}  # and the evaluation history beside them
    manifest = json.loads(stack.s3.get_object(Bucket=stack.bucket, Key="zero2/ckpt/step-00000008/manifest.json")
                          ["Body"].read())
    assert manifest["config"]["spec"]["training"]["maxSteps"] == STEPS  # the job's config travels along

    model_dir = exported_model(stack.s3, stack.bucket, "zero2/out/", stack.work / "zero2-model")
    assert held_out_loss(model_dir, stack.data) == pytest.approx(zero2.of("eval")[-1]["eval_loss"], rel=1e-3)
    assert generates(model_dir)


def test_rank0_reports_progress_on_its_finetunejob(stack: Stack, zero2: Run) -> None:
    assert_ok(zero2)
    job = json.loads(stack.cluster.kubectl("get", "ftj", "zero2", "-n", stack.namespace, "-o", "json").stdout)
    status = job["status"]
    progress = status["progress"]
    assert (progress["step"], progress["totalSteps"], status["progressText"]) == (STEPS, STEPS, "8/8")
    assert progress["loss"] == pytest.approx(zero2.losses()[STEPS], rel=1e-4)
    assert progress["evalLoss"] == pytest.approx(zero2.of("eval")[-1]["eval_loss"], rel=1e-4)
    assert {"epoch", "learningRate", "tokensPerSecond", "etaSeconds", "updatedAt"} <= set(progress)
    latest = status["checkpoints"]["latest"]
    assert latest["step"] == STEPS and latest["uri"] == f"s3://{stack.bucket}/zero2/ckpt/step-00000008/"
    assert status["checkpoints"]["committed"] == 2 and latest["committedAt"]
    assert status["output"]["uri"] == f"s3://{stack.bucket}/zero2/out/"


# --- a rank killed in the middle of an upload


def worker_pid(torchrun: subprocess.Popen[str]) -> int:
    """The training process torchrun started (the 'rank')."""
    children = Path(f"/proc/{torchrun.pid}/task/{torchrun.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def step_folders(s3: Any, bucket: str, prefix: str) -> tuple[set[int], set[int]]:
    """(committed, uncommitted) steps under a checkpoint prefix."""
    found = keys(s3, bucket, prefix)
    # Only step folders: metrics.jsonl, tensorboard/ and diagnostics/ live beside them.
    steps = {int(k[len(prefix):].split("/")[0].removeprefix("step-")) for k in found
             if k[len(prefix):].startswith("step-")}
    committed = {s for s in steps if f"{prefix}step-{s:08d}/manifest.json" in found}
    return committed, steps - committed


def test_rank_killed_mid_upload_resumes_from_the_last_commit(stack: Stack, zero2: Run) -> None:
    assert_ok(zero2)
    prefix, work = "kill/ckpt/", stack.work / "kill"
    spec = tiny_spec(stack.bucket, "kill", stack.cluster.local.s3_url)
    config = operator_config(work / "config.json", "kill", stack.namespace, spec)
    # Slow uploads (8 MB/s per rank) keep a checkpoint in flight long enough to kill a rank during it.
    first = Launched(torchrun_nodes(None), envs=node_envs(work, config, **s3_env(stack.cluster),
                                                          KUBETUNE_UPLOAD_MAX_BANDWIDTH_MB="8"))
    try:
        wait_for_event(first, lambda e: e["event"] == "checkpoint_committed", 240, "first commit")
        deadline = time.monotonic() + 60
        while not (folders := step_folders(stack.s3, stack.bucket, prefix))[1]:
            assert time.monotonic() < deadline, "no checkpoint upload in flight after the first commit"
            time.sleep(0.1)
        subprocess.run(["kill", "-KILL", str(worker_pid(first.procs[1]))], check=True)
        killed_at = step_folders(stack.s3, stack.bucket, prefix)
    finally:
        interrupted = first.wait(timeout=120)
    assert any(rc != 0 for rc in interrupted.returncodes)
    last_commit, in_flight = max(killed_at[0]), killed_at[1] - killed_at[0]
    assert in_flight and min(in_flight) > last_commit, (killed_at, folders)

    second = launch(torchrun_nodes(None), envs=node_envs(work, config, **s3_env(stack.cluster)))
    assert_ok(second)
    assert second.of("resumed")[0]["step"] == last_commit  # not an uncommitted step
    assert set(second.of("checkpoint_cleanup")[0]["removed_uncommitted"]) >= in_flight
    expected = {step: loss for step, loss in zero2.losses().items() if step > last_commit}
    assert second.losses() == pytest.approx(expected, rel=1e-4)  # same losses as the uninterrupted run
    assert second.of("eval")[-1]["eval_loss"] == pytest.approx(zero2.of("eval")[-1]["eval_loss"], rel=1e-4)
    committed = assert_manifests_intact(stack.s3, stack.bucket, prefix)
    assert len(committed) == 2 and committed[-1] == STEPS


# --- ZeRO-3, LoRA, while the S3 store goes away for a while


# In `make test-long`: the short chaos run in `make test` trains through an S3 outage too (full, ZeRO-2).
@pytest.mark.long
def test_zero3_lora_keeps_training_through_an_s3_outage(stack: Stack, tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    minio = Minio(stack.cluster.local.bins.minio, tmp_path / "minio")
    minio.start()
    try:
        s3, bucket = minio.client(), "faults"
        seed_bucket(s3, bucket, tiny_model_dir, stack.data)
        steps = 16
        spec = tiny_spec(bucket, "lora", minio.url, deepspeed={"zeroStage": 3},
                         method={"type": "lora", "gradientCheckpointing": False,
                                 "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": LORA_MODULES}},
                         training={"maxSteps": steps, "precision": "bf16", "learningRate": 2e-2},
                         output={"mergeLora": True})
        config = operator_config(tmp_path / "config.json", "lora", stack.namespace, spec)
        run = Launched(torchrun_nodes(None), envs=node_envs(tmp_path, config, **minio.env,
                                                            KUBETUNE_UPLOAD_GIVE_UP_SECONDS="300"))
        try:
            wait_for_event(run, lambda e: e["event"] == "checkpoint_committed", 240, "first commit")
            minio.stop()
            stopped = time.time()
            wait_for_event(run, lambda e: e["event"] in ("upload_retry", "commit_retry"), 60, "a retry")
            time.sleep(max(0.0, stopped + 12 - time.time()))
            restarted = time.time()
            minio.start()
        finally:
            result = run.wait(timeout=400)
        assert_ok(result)
        # Training went on while the store was down, uploads retried, and commits resumed after it.
        assert any(stopped < e["time"] < restarted for e in result.of("step"))
        assert result.of("upload_retry") or result.of("commit_retry")
        commits = result.of("checkpoint_committed")
        assert commits[-1]["step"] == steps and commits[-1]["time"] > restarted
        assert assert_manifests_intact(s3, bucket, "lora/ckpt/")[-1] == steps

        setup, losses = result.of("setup")[0], result.losses()
        assert setup["trainable_params"] < setup["params"] / 2 and losses[steps] < losses[1]
        model_dir = exported_model(s3, bucket, "lora/out/", tmp_path / "model")
        assert not (model_dir / "adapter_config.json").exists()  # merged: plain transformers loads it
        assert held_out_loss(model_dir, stack.data) == pytest.approx(result.of("eval")[-1]["eval_loss"], rel=0.03)
        assert generates(model_dir)
    finally:
        minio.stop()
