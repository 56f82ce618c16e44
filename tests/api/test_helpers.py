"""Helpers the operator and the trainer build on: world size, batch arithmetic,
warmup, URIs, and the status model's wire format."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest
from ftj_cases import REPO, base_job, example_jobs

from kubetune_api import (
    Condition,
    FineTuneJobStatus,
    LoraSpec,
    ProgressStatus,
    ResourcesSpec,
    TrainingSpec,
    parse_spec,
    parse_uri,
    progress_text,
)
from kubetune_api.constants import PVC_MOUNT_ROOT


@pytest.mark.parametrize(
    ("nodes", "gpus", "world", "total_gpus"),
    [(1, 1, 1, 1), (2, 8, 16, 16), (3, 0, 3, 0), (4, 4, 16, 16)],
)
def test_world_size_counts_one_process_per_gpu_or_per_cpu_node(
    nodes: int, gpus: int, world: int, total_gpus: int
) -> None:
    resources = ResourcesSpec(nodes=nodes, gpus_per_node=gpus)
    assert resources.world_size == world
    assert resources.total_gpus == total_gpus
    assert resources.processes_per_node == max(gpus, 1)


def test_gradient_accumulation_follows_from_the_batch_sizes() -> None:
    training = TrainingSpec(epochs=1, micro_batch_size=4, global_batch_size=128)
    assert training.global_batch_size_for(16) == 128
    assert training.gradient_accumulation_steps(16) == 2
    no_global = TrainingSpec(epochs=1, micro_batch_size=4)
    assert no_global.global_batch_size_for(16) == 64
    assert no_global.gradient_accumulation_steps(16) == 1


def test_total_and_warmup_steps() -> None:
    by_epochs = TrainingSpec(epochs=3, warmup_ratio=0.1)
    assert by_epochs.total_steps(steps_per_epoch=100) == 300
    assert by_epochs.warmup_steps_for(300) == 30
    by_steps = TrainingSpec(max_steps=500, warmup_steps=20)
    assert by_steps.total_steps(steps_per_epoch=100) == 500
    assert by_steps.warmup_steps_for(500) == 20
    assert TrainingSpec(max_steps=5).warmup_steps_for(5) == 0


def test_effective_lora_and_peft_targets() -> None:
    spec = parse_spec(example_jobs()["s3-compatible.yaml"]["spec"])
    assert spec.method.lora is None
    assert spec.method.effective_lora == LoraSpec()
    assert LoraSpec().peft_target_modules == "all-linear"
    assert LoraSpec(target_modules=["q_proj"]).peft_target_modules == ["q_proj"]


def test_record_keys_default_per_format_and_follow_fields() -> None:
    spec = parse_spec(example_jobs()["full-zero3.yaml"]["spec"])
    assert spec.dataset.record_keys() == {"prompt": "instruction", "completion": "response"}
    chat = parse_spec(example_jobs()["minimal.yaml"]["spec"])
    assert chat.dataset.record_keys() == {"messages": "messages"}


def test_checkpoint_uri_and_pvc_claims() -> None:
    spec = parse_spec(example_jobs()["full-zero3.yaml"]["spec"])
    assert spec.checkpoint_uri == "pvc://checkpoints/llama-70b-sft/"
    assert spec.pvc_claims() == ["checkpoints", "models", "sft-data"]
    assert parse_spec(base_job()["spec"]).pvc_claims() == []


@pytest.mark.parametrize(
    ("uri", "scheme", "location", "path", "revision"),
    [
        ("s3://models/llama-3/", "s3", "models", "llama-3/", None),
        ("s3://bucket", "s3", "bucket", "", None),
        ("pvc://data/train/part-0.jsonl", "pvc", "data", "train/part-0.jsonl", None),
        ("hf://meta-llama/Llama-3.1-8B@v1.0", "hf", "meta-llama/Llama-3.1-8B", "", "v1.0"),
        (
            "hf://datasets/acme/chats@abc123/train.jsonl",
            "hf",
            "acme/chats",
            "train.jsonl",
            "abc123",
        ),
    ],
)
def test_parse_uri(uri: str, scheme: str, location: str, path: str, revision: str | None) -> None:
    parsed = parse_uri(uri)
    assert (parsed.scheme, parsed.location, parsed.path, parsed.revision) == (
        scheme,
        location,
        path,
        revision,
    )


def test_uri_children_and_mount_paths() -> None:
    assert parse_uri("s3://ckpt/job/").child("step-00000500", "manifest.json") == (
        "s3://ckpt/job/step-00000500/manifest.json"
    )
    assert parse_uri("pvc://data/train").local_path() == f"{PVC_MOUNT_ROOT}/data/train"
    with pytest.raises(ValueError, match="not a pvc:// URI"):
        parse_uri("s3://a-bucket/x").local_path()
    with pytest.raises(ValueError, match="not an s3://, hf:// or pvc:// URI"):
        parse_uri("/local/path")


def test_status_serialises_like_kubernetes() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=timezone(timedelta(hours=2)))
    status = FineTuneJobStatus(
        phase="Running",
        conditions=[
            Condition(
                type="Ready", status="True", reason="WorkersRunning", last_transition_time=when
            )
        ],
        progress=ProgressStatus(step=1200, total_steps=3000, loss=1.25, updated_at=when),
        progress_text=progress_text(1200, 3000),
    )
    wire = status.to_manifest()
    assert wire["conditions"][0]["lastTransitionTime"] == "2026-01-02T01:04:05Z"
    assert wire["progress"] == {
        "step": 1200,
        "totalSteps": 3000,
        "loss": 1.25,
        "updatedAt": "2026-01-02T01:04:05Z",
    }
    assert wire["progressText"] == "1200/3000"
    json.dumps(wire)
    back = FineTuneJobStatus.model_validate(wire)
    assert back.condition("Ready") is not None
    assert back.condition("Failed") is None
    assert not back.is_terminal


def test_status_reading_ignores_fields_it_does_not_know() -> None:
    status = FineTuneJobStatus.model_validate(
        {"phase": "Succeeded", "fromTheFuture": 1, "progress": {"step": 3, "newThing": "x"}}
    )
    assert status.is_terminal
    assert status.progress == ProgressStatus(step=3)


def test_status_rejects_nan_loss() -> None:
    # JSON has no NaN: the trainer must not report one.
    with pytest.raises(ValueError, match="finite"):
        ProgressStatus(loss=float("nan"))


def test_progress_text_without_total() -> None:
    assert progress_text(7, None) == "7"
    assert progress_text(7, 0) == "7"


def test_naive_timestamps_are_taken_as_utc() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5)
    wire = ProgressStatus(updated_at=naive).to_manifest()
    assert wire["updatedAt"] == "2026-01-02T03:04:05Z"
    assert datetime.fromisoformat(wire["updatedAt"]) == naive.replace(tzinfo=UTC)


def test_api_package_needs_neither_kopf_nor_torch() -> None:
    code = (
        "import sys, kubetune_api, kubetune_api.crd, kubetune_api.reference\n"
        "heavy = {'kopf', 'torch', 'kubernetes', 'deepspeed'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO / "api")
