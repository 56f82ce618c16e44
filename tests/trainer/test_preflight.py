"""The preflight (`python -m kubetune_trainer.preflight`), run as its pod runs it: a process with the
job's config, whose report or one-line failure is its termination message.

What a user checks: a bad input fails in the preflight with the problem named (the file:line of
a bad record, the prefix the keys cannot write, the missing chat template, the numbers of a model
that does not fit); a good one reports its counts, and its tokenized data set makes the training
run exactly the one that tokenizes for itself, resumes included; a second job on the same data
reuses it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import PYTHON, Run, launch, python_module, s3_env, write_config, write_jsonl

from kubetune_trainer.manifest import step_folder

SENTENCES = ["the cat sat on the mat.", "a dog ran in the park.", "my bird can sing a song."]


def preflight(config: Path, env: dict[str, str], tmp_path: Path) -> tuple[Run, str]:
    """Run the preflight; its run and its termination message."""
    log = tmp_path / f"termination-{config.stem}"
    log.write_text("")
    run = launch([[str(PYTHON), "-m", "kubetune_trainer.preflight", str(config)]],
                 envs=[{**env, "KUBETUNE_TERMINATION_LOG": str(log)}], timeout=300)
    return run, log.read_text()


def write_data(root: Path, rows: list[dict[str, Any]]) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "data" / "train.jsonl", rows)


def pvc_job(name: str, root: Path, tiny_model_dir: Path, **spec: Any) -> dict[str, Any]:
    """A one-process CPU job on pvc:// claims (local folders under `root`)."""
    for claim in ("models", "data", "work"):
        (root / claim).mkdir(parents=True, exist_ok=True)
    if not (root / "models" / "tiny").exists():
        (root / "models" / "tiny").symlink_to(tiny_model_dir)
    base: dict[str, Any] = {
        "model": {"uri": "pvc://models/tiny"},
        "dataset": {"train": "pvc://data/train.jsonl", "format": "text", "evalSplit": 0.1},
        "training": {"maxSteps": 20, "learningRate": 1e-2, "microBatchSize": 2, "globalBatchSize": 4,
                     "maxSeqLength": 32, "precision": "fp32", "logEverySteps": 1},
        "deepspeed": {"zeroStage": 1},
        "resources": {"gpusPerNode": 0},
        "checkpoint": {"everySteps": 5, "keepLast": 4},
        "output": {"uri": f"pvc://work/{name}"},
        "preflight": {"cacheUri": "pvc://work/cache/"},
    }
    base.update(spec)
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": base}


def test_workers_that_read_the_cache_train_exactly_as_workers_that_tokenize(tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    root = tmp_path / "pvc"
    env = {"KUBETUNE_PVC_ROOT": str(root), "KUBETUNE_SCRATCH_DIR": str(tmp_path / "scratch")}
    # 200 records of different lengths, some cut at maxSeqLength 32.
    write_data(root, [{"text": " ".join([SENTENCES[i % 3]] * (1 + i % 5))} for i in range(200)])
    first = write_config(tmp_path / "cached.json", pvc_job("cached", root, tiny_model_dir))
    run, message = preflight(first, env, tmp_path)
    assert run.returncodes == [0], run.output[-3000:]
    report = json.loads(message)
    assert report["result"] == "Succeeded" and report["cached"] is False
    assert (report["records"], report["evalRecords"], report["sequences"]) == (180, 20, 180)
    assert report["truncated"] > 0 and report["tokens"] > 180 * 5
    assert (report["stepsPerEpoch"], report["totalSteps"]) == (45, 20)
    assert report["cacheUri"].startswith("pvc://work/cache/") and report["memoryPerGpuBytes"] > 0
    assert run.of("preflight_data")[0]["cached"] is False
    key = report["cacheUri"].rstrip("/").rsplit("/", 1)[-1]

    # The same data and tokenizer in a second job: nothing is tokenized again.
    again, message = preflight(write_config(tmp_path / "again.json", pvc_job("again", root, tiny_model_dir)),
                               env, tmp_path)
    assert again.returncodes == [0], again.output[-3000:]
    assert json.loads(message)["cached"] is True and json.loads(message)["cacheUri"] == report["cacheUri"]
    assert again.of("preflight_data")[0]["cached"] is True

    # Training from the cache and training that tokenizes: the same losses, step for step.
    cached = launch([python_module(first)], envs=[{**env, "KUBETUNE_DATA_CACHE_KEY": key}])
    assert cached.returncodes == [0], cached.output[-3000:]
    assert cached.of("data_loaded")[0]["source"] == "cache"
    plain = launch([python_module(write_config(tmp_path / "plain.json", pvc_job("plain", root, tiny_model_dir)))],
                   envs=[env])
    assert plain.returncodes == [0], plain.output[-3000:]
    assert plain.of("data_loaded")[0]["source"] == "tokenized"
    losses, expected = cached.losses(), plain.losses()
    assert sorted(losses) == list(range(1, 21)) and sorted(expected) == list(range(1, 21))
    for step in expected:
        assert losses[step] == pytest.approx(expected[step], rel=1e-6), step

    # Resumed from the mid-epoch checkpoint of step 10 (45 steps an epoch), from the cache: the same records.
    checkpoints = root / "work" / "cached" / "checkpoints"
    for later in (15, 20):
        shutil.rmtree(checkpoints / step_folder(later))
    (root / "work" / "cached" / "manifest.json").unlink()
    resumed = launch([python_module(first)], envs=[{**env, "KUBETUNE_DATA_CACHE_KEY": key}])
    assert resumed.returncodes == [0], resumed.output[-3000:]
    assert resumed.of("resumed")[0]["step"] == 10 and resumed.of("resumed")[0]["step_in_epoch"] == 10
    again_losses = resumed.losses()
    assert sorted(again_losses) == list(range(11, 21))
    for step in again_losses:
        assert again_losses[step] == pytest.approx(expected[step], rel=1e-6), step


def test_a_bad_record_fails_the_preflight_with_its_file_and_line_and_the_count_of_all(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "pvc"
    (root / "data").mkdir(parents=True)
    lines = [json.dumps({"text": SENTENCES[i % 3]}) for i in range(12_000)]
    lines[9_999] = '{"text": "an unterminated string}'  # line 10,000
    lines[11_499] = json.dumps({"txt": "a misspelt field"})  # line 11,500
    (root / "data" / "train.jsonl").write_text("\n".join(lines) + "\n")
    config = write_config(tmp_path / "bad.json", pvc_job("bad", root, tiny_model_dir))
    run, message = preflight(config, {"KUBETUNE_PVC_ROOT": str(root), "KUBETUNE_SCRATCH_DIR": str(tmp_path / "s")},
                             tmp_path)
    assert run.returncodes == [2], run.output[-3000:]
    assert message.startswith("pvc://data/train.jsonl:10000: not valid JSON"), message
    assert "2 bad record(s) in all" in message and "pvc://data/train.jsonl:11500: field 'text'" in message
    assert not (root / "work" / "cache").exists() or not any((root / "work" / "cache").iterdir())


def test_chat_data_with_a_tokenizer_without_chat_template_fails_the_preflight(tiny_model_dir: Path,
                                                                             tmp_path: Path) -> None:
    root = tmp_path / "pvc"
    model = root / "models" / "tiny"
    shutil.copytree(tiny_model_dir, model)
    config_file = model / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config.pop("chat_template", None)
    config_file.write_text(json.dumps(tokenizer_config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    write_data(root, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 8)
    job = pvc_job("chat", root, tiny_model_dir, dataset={"train": "pvc://data/train.jsonl", "format": "chat"})
    run, message = preflight(write_config(tmp_path / "chat.json", job),
                             {"KUBETUNE_PVC_ROOT": str(root), "KUBETUNE_SCRATCH_DIR": str(tmp_path / "s")}, tmp_path)
    assert run.returncodes == [2], run.output[-3000:]
    assert "dataset format 'chat' needs a tokenizer with a chat template" in message, message
    assert not run.of("preflight_data")  # found before any record was read


def test_a_model_that_cannot_fit_the_declared_gpu_memory_fails_the_preflight_with_the_numbers(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "pvc"
    write_data(root, [{"text": s} for s in SENTENCES * 10])
    job = pvc_job("big", root, tiny_model_dir,
                  resources={"gpusPerNode": 1, "gpuMemory": "64Mi"})
    run, message = preflight(write_config(tmp_path / "big.json", job),
                             {"KUBETUNE_PVC_ROOT": str(root), "KUBETUNE_SCRATCH_DIR": str(tmp_path / "s")}, tmp_path)
    assert run.returncodes == [2], run.output[-3000:]
    assert message.startswith("the model does not fit the GPUs: it needs about "), message
    assert "GiB per GPU: parameters" in message and "but each GPU has 0.1 GiB" in message
    assert not run.of("preflight_data")  # found before any record was read


def test_keys_that_cannot_write_the_output_prefix_fail_the_preflight_naming_it(
        cluster: Any, s3: Any, bucket: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    import boto3

    for path in tiny_model_dir.iterdir():
        s3.upload_file(str(path), bucket, f"model/{path.name}")
    s3.put_object(Bucket=bucket, Key="data/train.jsonl",
                  Body="\n".join(json.dumps({"text": s}) for s in SENTENCES * 10).encode())
    root = s3_env(cluster)
    # A MinIO identity whose policy may read the bucket and write only its checkpoints and cache.
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"],
         "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]},
        {"Effect": "Allow", "Action": ["s3:PutObject", "s3:DeleteObject"],
         "Resource": [f"arn:aws:s3:::{bucket}/checkpoints/*", f"arn:aws:s3:::{bucket}/kubetune-cache/*"]}]}
    sts = boto3.client("sts", endpoint_url=root["AWS_ENDPOINT_URL"], region_name="us-east-1",
                       aws_access_key_id=root["AWS_ACCESS_KEY_ID"], aws_secret_access_key=root["AWS_SECRET_ACCESS_KEY"])
    keys = sts.assume_role(RoleArn="arn:minio:iam:::role/preflight-test", RoleSessionName="read-only-output",
                           Policy=json.dumps(policy), DurationSeconds=3600)["Credentials"]
    env = {"AWS_ENDPOINT_URL": root["AWS_ENDPOINT_URL"], "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": keys["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": keys["SecretAccessKey"],
           "AWS_SESSION_TOKEN": keys["SessionToken"], "KUBETUNE_SCRATCH_DIR": str(tmp_path / "s"),
           "KUBETUNE_UPLOAD_GIVE_UP_SECONDS": "20"}
    job = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "ro"},
           "spec": {"model": {"uri": f"s3://{bucket}/model/"},
                    "dataset": {"train": f"s3://{bucket}/data/train.jsonl", "format": "text"},
                    "training": {"maxSteps": 2, "microBatchSize": 1, "maxSeqLength": 32},
                    "resources": {"gpusPerNode": 0},
                    "checkpoint": {"uri": f"s3://{bucket}/checkpoints/ro/"},
                    "output": {"uri": f"s3://{bucket}/output/ro/"}}}
    run, message = preflight(write_config(tmp_path / "ro.json", job), env, tmp_path)
    assert run.returncodes == [2], run.output[-3000:]
    assert message.startswith(f"spec.output.uri s3://{bucket}/output/ro/: the job's credentials cannot write"), message
    assert keys["SecretAccessKey"] not in run.output + message
    # The checkpoint prefix it may write passed, and its probe is gone again.
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="checkpoints/").get("Contents", [])
    assert listed == []


def test_the_report_fits_a_termination_message_whatever_the_labels() -> None:
    from kubetune_api import PreflightStatus
    from kubetune_trainer.preflight import termination_report

    few = PreflightStatus(result="Succeeded", records=10, labels={"positive": 6, "negative": 4})
    assert json.loads(termination_report(few))["labels"] == {"positive": 6, "negative": 4}
    many = PreflightStatus(result="Succeeded", records=6400, labels={f"label number {i} " + "x" * 60: 100 for i in range(64)})
    report = termination_report(many)
    assert len(report) < 4000 and "labels" not in json.loads(report) and json.loads(report)["records"] == 6400
