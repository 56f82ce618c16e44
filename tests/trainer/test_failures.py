"""Bad input fails fast: one line naming the problem, on stderr and in the termination log, exit 2.

Each case is a real `python -m kubetune_trainer` (a world of one, as one worker
of a pod would start it), with the job given as a FineTuneJob spec. pvc://
locations point into a temporary folder (KUBETUNE_PVC_ROOT), as a mounted
claim would.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import launch, python_module, s3_env, write_jsonl

from kubetune_testbed.s3folders import delete_prefix, upload_folder
from kubetune_trainer.__main__ import main

PREFIX = "kubetune-trainer: error: "


def spec(model: str, train: str, **training: Any) -> dict[str, Any]:
    return {
        "model": {"uri": model},
        "dataset": {"train": train, "format": "text"},
        "training": {"maxSteps": 2, "maxSeqLength": 32, "precision": "fp32", **training},
        "resources": {"gpusPerNode": 0},
        "checkpoint": {"uri": "pvc://work/ckpt/", "everySteps": 1},
        "output": {"uri": "pvc://work/out/"},
    }


@pytest.fixture
def pvc_root(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """Claims 'models' (the tiny model), 'data' and 'work', as the pods would mount them."""
    root = tmp_path / "pvc"
    (root / "models").mkdir(parents=True)
    (root / "models" / "tiny").symlink_to(tiny_model_dir)
    (root / "work").mkdir()
    data = root / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [{"text": "the cat sat on the mat."}] * 8)
    (data / "broken.jsonl").write_text('{"text": "fine"}\n{"text": "no closing brace"\n')
    (data / "empty.jsonl").write_text("\n")
    return root


def fails_with(tmp_path: Path, job: dict[str, Any], env: dict[str, str]) -> str:
    """Run the trainer on `job`; assert exit 2 with exactly one error line, also in the termination
    log; return that line."""
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                                  "metadata": {"name": "bad-input"}, "spec": job}))
    log = tmp_path / "termination-log"
    log.write_text("")
    started = time.monotonic()
    run = launch([python_module(config)], timeout=300, envs=[{
        "KUBETUNE_TERMINATION_LOG": str(log), "KUBETUNE_SCRATCH_DIR": str(tmp_path / "scratch"), **env}])
    errors = [line.removeprefix(PREFIX) for line in run.output.splitlines() if line.startswith(PREFIX)]
    assert run.returncodes == [2] and len(errors) == 1, run.output[-3000:]
    assert log.read_text() == errors[0]
    assert "Traceback" not in run.output
    print(f"failed in {time.monotonic() - started:.1f}s: {errors[0]}")
    return errors[0]


@pytest.mark.parametrize(("train", "training", "expected"), [
    ("pvc://data/broken.jsonl", {}, "pvc://data/broken.jsonl:2: not valid JSON"),
    ("pvc://data/empty.jsonl", {}, "pvc://data/empty.jsonl: the dataset file holds no records"),
    ("pvc://data/train.jsonl", {"maxSeqLength": 4096},
     "sequence length 4096 (spec.training.maxSeqLength) exceeds the model's maximum of 2048 tokens"),
], ids=["malformed-jsonl", "empty-dataset", "sequence-too-long"])
def test_bad_data_fails_fast(train: str, training: dict[str, Any], expected: str, pvc_root: Path,
                             tmp_path: Path) -> None:
    line = fails_with(tmp_path, spec("pvc://models/tiny", train, **training), {"KUBETUNE_PVC_ROOT": str(pvc_root)})
    assert line.startswith(expected), line


def classification_spec(model: str, train: str, task: str = "sequence-classification", **dataset: Any) -> dict[str, Any]:
    fmt = "classification" if task == "sequence-classification" else "image-classification"
    return {**spec(model, train), "task": task, "dataset": {"train": train, "format": fmt, **dataset}}


@pytest.fixture
def classification_claims(pvc_root: Path, tiny_bert_dir: Path, tiny_resnet_dir: Path, tiny_model_dir: Path) -> Path:
    """pvc_root plus the tiny BERT and ResNet, a CodeGen (a causal LM without a classification head
    in transformers) and records with a bad label and a broken image."""
    from transformers import CodeGenConfig

    (pvc_root / "models" / "bert").symlink_to(tiny_bert_dir)
    (pvc_root / "models" / "resnet").symlink_to(tiny_resnet_dir)
    codegen = pvc_root / "models" / "codegen"
    codegen.mkdir()
    CodeGenConfig(n_layer=1, n_embd=32, n_head=2, rotary_dim=8).save_pretrained(codegen)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (codegen / name).symlink_to(tiny_model_dir / name)
    data = pvc_root / "data"
    write_jsonl(data / "labelled.jsonl", [{"text": "fine", "label": "good"}, {"text": "hmm", "label": "meh"}])
    (data / "broken.png").write_bytes(b"not a png")
    write_jsonl(data / "images.jsonl", [{"image": "broken.png", "label": 1}])
    return pvc_root


# Each a real `python -m kubetune_trainer`; the other bad records (no label, an integer label
# outside the labels, ...) are test_tasks.py's, against the same code without a process each.
@pytest.mark.parametrize(("job", "expected"), [
    (classification_spec("pvc://models/bert", "pvc://data/labelled.jsonl", labels=["good", "bad"]),
     "pvc://data/labelled.jsonl:2: label 'meh' is not one of spec.dataset.labels (good, bad)"),
    (classification_spec("pvc://models/resnet", "pvc://data/images.jsonl", task="image-classification"),
     "pvc://data/images.jsonl:1: the image does not decode"),
    (classification_spec("pvc://models/codegen", "pvc://data/labelled.jsonl"),
     "spec.task sequence-classification: the model pvc://models/codegen is a codegen, for which "
     "transformers has no sequence-classification model"),
], ids=["label-outside-labels", "image-that-does-not-decode", "model-without-the-head"])
def test_bad_classification_input_fails_fast(job: dict[str, Any], expected: str, classification_claims: Path,
                                             tmp_path: Path) -> None:
    line = fails_with(tmp_path, job, {"KUBETUNE_PVC_ROOT": str(classification_claims)})
    assert line.startswith(expected), line


@pytest.fixture
def model_bucket(cluster: Any, tiny_model_dir: Path, pvc_root: Path) -> Iterator[str]:
    s3, bucket = cluster.s3_client(), f"bad-input-{secrets.token_hex(3)}"
    s3.create_bucket(Bucket=bucket)
    upload_folder(s3, tiny_model_dir, bucket, "models/tiny")
    s3.upload_file(str(pvc_root / "data" / "train.jsonl"), bucket, "data/train.jsonl")
    yield bucket
    delete_prefix(s3, bucket)
    s3.delete_bucket(Bucket=bucket)


@pytest.mark.cluster
def test_missing_model_fails_fast(cluster: Any, model_bucket: str, pvc_root: Path, tmp_path: Path) -> None:
    job = spec(f"s3://{model_bucket}/models/missing/", f"s3://{model_bucket}/data/train.jsonl")
    line = fails_with(tmp_path, job, {**s3_env(cluster), "KUBETUNE_PVC_ROOT": str(pvc_root)})
    assert line.startswith(f"model.uri s3://{model_bucket}/models/missing/: no files under this prefix"), line


@pytest.mark.cluster
def test_wrong_s3_credentials_fail_fast_without_showing_them(cluster: Any, model_bucket: str, pvc_root: Path,
                                                             tmp_path: Path) -> None:
    job = spec(f"s3://{model_bucket}/models/tiny/", f"s3://{model_bucket}/data/train.jsonl")
    wrong = "not-the-secret-" + secrets.token_hex(8)
    line = fails_with(tmp_path, job, {**s3_env(cluster), "AWS_SECRET_ACCESS_KEY": wrong,
                                      "KUBETUNE_PVC_ROOT": str(pvc_root)})
    assert "S3 refused the request (SignatureDoesNotMatch)" in line and "AWS_SECRET_ACCESS_KEY" in line, line
    assert wrong not in line


def test_invalid_spec_names_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    manifest = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x"},
                "spec": spec("s3://models/m/", "s3://data/t.jsonl", microBatchSize=0)}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(manifest))
    assert main([str(path)]) == 2
    expected = f"{path}: invalid FineTuneJob spec: spec.training.microBatchSize must be >= 1 (got 0)"
    assert capsys.readouterr().err == PREFIX + expected + "\n"
    assert log.read_text() == expected


def test_a_hub_model_without_network_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune_api import StorageSpec
    from kubetune_trainer.errors import ConfigError, DataError
    from kubetune_trainer.settings import Settings
    from kubetune_trainer.staging import UriFiles, stage_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as in a cluster without a route to the Hub
    settings = Settings(scratch_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^model.uri hf://HuggingFaceTB/SmolLM2-135M@main: the Hub cannot be "
                                          r"reached from the pods \(offline\)"):
        stage_model("hf://HuggingFaceTB/SmolLM2-135M@main", settings, StorageSpec())
    with pytest.raises(DataError, match=r"^hf://datasets/org/chat/train: cannot list the dataset on the Hub"):
        UriFiles(settings, StorageSpec()).files("hf://datasets/org/chat/train")
