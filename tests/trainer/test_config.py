"""The trainer's inputs: the job file in its three shapes (parsed by the shared FineTuneJob model),
the spec -> TrainConfig mapping, a developer's trainer config, and the environment settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune_api import parse_spec
from kubetune_trainer.config import TrainConfig, from_dict
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.jobfile import Job, load_job, redacted
from kubetune_trainer.settings import Settings, settings_from_env
from kubetune_trainer.spec_adapter import train_config_from_spec

MINIMAL = {"model": {"path": "/models/m"}, "data": {"train": "/data/t.jsonl"}, "output": {"dir": "/out"}}


def test_yaml_with_spec_spelling(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("""
model: {path: /models/m, gradientCheckpointing: true}
data: {train: /data/t.jsonl, format: chat, maxSeqLength: 512, packing: false}
method: {type: lora, lora: {r: 8, alpha: 16, targetModules: [q_proj, v_proj]}}
training: {epochs: 2, learningRate: 2.0e-4, microBatchSize: 2, globalBatchSize: 8, precision: fp32}
deepspeed: {zeroStage: 3, config: {zero_optimization: {reduce_bucket_size: 1000}}}
output: {dir: /out, mergeLora: false}
""")
    cfg = load_job(path, Settings())
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.gradient_checkpointing is True
    assert cfg.data.format == "chat" and cfg.data.max_seq_length == 512 and cfg.data.packing is False
    assert cfg.method.lora.target_modules == ("q_proj", "v_proj")
    assert cfg.training.learning_rate == 2e-4 and cfg.training.global_batch_size == 8
    assert cfg.deepspeed.zero_stage == 3
    assert cfg.deepspeed.config == {"zero_optimization": {"reduce_bucket_size": 1000}}
    assert cfg.output.merge_lora is False


@pytest.mark.parametrize(("patch", "message"), [
    ({"training": {"microBatchSize": 0}}, r"^training.micro_batch_size must be >= 1 \(got 0\)$"),
    ({"training": {"precision": "fp8"}}, r"^training.precision must be one of bf16, fp16, fp32 \(got 'fp8'\)$"),
    ({"training": {"learningRate": "fast"}}, r"^training.learning_rate must be a number"),
    ({"data": {"train": "/t.jsonl", "format": "csv"}}, r"^data.format must be one of text, prompt-completion, chat"),
    ({"deepspeed": {"zeroStage": 4}}, r"^deepspeed.zero_stage must be one of 0, 1, 2, 3 \(got 4\)$"),
    ({"deepspeed": {"offload": "cpu", "zeroStage": 0}}, r"offload=cpu needs deepspeed.zero_stage >= 1"),
    ({"training": {"epocs": 2}}, r"^training.epocs: unknown field \(known: epochs, "),
    ({"model": {}}, r"^model.path is required$"),
])
def test_bad_values_name_the_field(patch: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, {**MINIMAL, **patch})


def test_unreadable_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_job(tmp_path / "missing.yaml", Settings())
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match=r"broken.json: not valid JSON"):
        load_job(broken, Settings())


SPEC = {
    "model": {"uri": "s3://models/llama-3.2-1b/", "trustRemoteCode": True},
    "dataset": {"train": "s3://data/train.jsonl", "eval": "s3://data/eval.jsonl", "format": "chat",
                "fields": {"messages": "conversation"}},
    "method": {"type": "lora", "lora": {"r": 8, "alpha": 16}, "gradientCheckpointing": False},
    "training": {"epochs": 3, "learningRate": 2.0e-4, "microBatchSize": 4, "globalBatchSize": 64,
                 "maxSeqLength": 1024, "warmupRatio": 0.1, "gradientClipping": 0.5, "evalEverySteps": 50},
    "deepspeed": {"zeroStage": 3, "offload": "cpu", "config": {"zero_optimization": {"stage3_max_live_parameters": 1}}},
    "resources": {"nodes": 2, "gpusPerNode": 8},
    "checkpoint": {"everySteps": 500, "keepLast": 4},
    "output": {"uri": "s3://models/support-bot/", "mergeLora": True},
    "storage": {"endpoint": "http://minio:9000", "region": "eu-west-1", "addressingStyle": "path"},
    "env": [{"name": "HF_TOKEN", "value": "hf_secret"}],
}


def test_spec_adapter_maps_the_shared_spec() -> None:
    cfg = train_config_from_spec(parse_spec(SPEC), model_dir="/stage/model", output_dir="/stage/out")
    assert cfg.model.path == "/stage/model" and cfg.model.trust_remote_code and not cfg.model.gradient_checkpointing
    assert (cfg.data.train, cfg.data.eval, cfg.data.format) == ("s3://data/train.jsonl", "s3://data/eval.jsonl", "chat")
    assert cfg.data.fields == {"messages": "conversation"} and cfg.data.max_seq_length == 1024
    assert cfg.data.packing is False  # the spec's default
    assert cfg.method.type == "lora" and (cfg.method.lora.r, cfg.method.lora.alpha) == (8, 16)
    assert cfg.method.lora.all_linear  # targetModules unset: PEFT's all-linear
    t = cfg.training
    assert (t.epochs, t.max_steps, t.micro_batch_size, t.global_batch_size) == (3, None, 4, 64)
    assert (t.learning_rate, t.max_grad_norm, t.eval_every_steps, t.precision) == (2.0e-4, 0.5, 50, "bf16")
    assert t.warmup_steps_for(1000) == 100 and t.log_every_steps == 10
    assert (cfg.deepspeed.zero_stage, cfg.deepspeed.offload) == (3, "cpu")
    assert cfg.deepspeed.config == {"zero_optimization": {"stage3_max_live_parameters": 1}}
    # checkpoint.uri unset: <output.uri>/checkpoints/
    assert cfg.checkpoint.uri == "s3://models/support-bot/checkpoints/"
    assert (cfg.checkpoint.every_steps, cfg.checkpoint.keep_last) == (500, 4)
    assert (cfg.output.dir, cfg.output.uri, cfg.output.merge_lora) == ("/stage/out", "s3://models/support-bot/", True)
    assert (cfg.storage.endpoint, cfg.storage.region, cfg.storage.addressing_style) == (
        "http://minio:9000", "eu-west-1", "path")


@pytest.mark.parametrize("shape", ["operator", "manifest", "standalone"])
def test_the_job_file_in_each_shape(shape: str, tmp_path: Path) -> None:
    import json

    import yaml

    doc = {
        "operator": {"job": {"name": "bot", "namespace": "ml", "uid": "u-1"}, "spec": SPEC, "derived": {}},
        "manifest": {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                     "metadata": {"name": "bot", "namespace": "ml", "uid": "u-1"}, "spec": SPEC},
        "standalone": {"spec": SPEC},
    }[shape]
    path = tmp_path / ("config.json" if shape == "operator" else "job.yaml")
    path.write_text(json.dumps(doc) if shape == "operator" else yaml.safe_dump(doc))
    job = load_job(path, Settings())
    assert isinstance(job, Job) and job.spec.training.epochs == 3 and job.manifest == SPEC
    expected = {} if shape == "standalone" else {"name": "bot", "namespace": "ml", "uid": "u-1"}
    assert job.record == {"job": expected, "spec": SPEC}
    # The pod's environment names the job it reports to.
    job = load_job(path, Settings(job_name="other", namespace="team"))
    assert isinstance(job, Job) and (job.name, job.namespace) == ("other", "team")
    assert redacted(job.manifest)["env"] == [{"name": "HF_TOKEN", "value": "<redacted>"}]


def test_an_invalid_spec_is_one_line_naming_every_field(tmp_path: Path) -> None:
    import json

    bad = {**SPEC, "training": {**SPEC["training"], "microBatchSize": 0, "precision": "fp8"}}  # type: ignore[dict-item]
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"spec": bad}))
    with pytest.raises(ConfigError) as error:
        load_job(path, Settings())
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: invalid FineTuneJob spec: ")
    assert "spec.training.microBatchSize must be >= 1 (got 0)" in message
    assert "spec.training.precision must be 'bf16', 'fp16' or 'fp32' (got 'fp8')" in message


def test_settings_from_the_environment() -> None:
    settings = settings_from_env({"KUBETUNE_CONFIG": "/etc/kubetune/config.json", "KUBETUNE_JOB_NAME": "bot",
                                  "KUBETUNE_NAMESPACE": "ml", "KUBERNETES_SERVICE_HOST": "10.0.0.1",
                                  "KUBETUNE_UPLOAD_MAX_BANDWIDTH_MB": "50", "KUBETUNE_UPLOAD_CHUNK_MB": "16"})
    assert settings.in_cluster and settings.config_path == "/etc/kubetune/config.json"
    assert settings.upload_max_bandwidth == 50 * 2**20 and settings.upload_chunk_bytes == 16 * 2**20
    assert not settings_from_env({}).in_cluster
    with pytest.raises(ConfigError, match="KUBETUNE_UPLOAD_CONCURRENCY must be a number"):
        settings_from_env({"KUBETUNE_UPLOAD_CONCURRENCY": "many"})
    with pytest.raises(ConfigError, match="KUBETUNE_UPLOAD_CHUNK_MB must be >= 5"):
        settings_from_env({"KUBETUNE_UPLOAD_CHUNK_MB": "1"})
