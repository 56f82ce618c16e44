"""The trainer's inputs: the job file (a FineTuneJob manifest, parsed by the shared model), the
settings the trainer derives from the spec, and the environment settings.

The trainer has no configuration of its own: what it does follows from the
FineTuneJob spec, so a field left out means exactly the default that the CRD
declares and `kubectl explain` shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_api import FineTuneJobSpec, parse_spec
from kubetune_operator.children import JobRef, trainer_job
from kubetune_trainer.data import BatchLayout
from kubetune_trainer.ds_config import build_ds_config
from kubetune_trainer.engine import lr_schedule
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.jobfile import job_record, load_job, redacted
from kubetune_trainer.loop import LoopPlan
from kubetune_trainer.settings import Settings, settings_from_env

REPO = Path(__file__).resolve().parents[2]
MINIMAL = REPO / "examples" / "minimal.yaml"
CRD = REPO / "crds" / "kubetune.io_finetunejobs.yaml"


def manifest(spec: dict[str, Any], **metadata: str) -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": metadata, "spec": spec}


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc) if path.suffix == ".json" else yaml.safe_dump(doc))
    return path


def test_a_manifest_in_the_specs_spelling(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("""
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: dev}
spec:
  model: {uri: pvc://models/m}
  dataset: {train: pvc://data/t.jsonl, format: chat}
  method: {type: lora, lora: {r: 8, alpha: 16, targetModules: [q_proj, v_proj]}, gradientCheckpointing: true}
  training: {epochs: 2, learningRate: 2.0e-4, microBatchSize: 2, globalBatchSize: 8, maxSeqLength: 512,
             packing: false, precision: fp32}
  deepspeed: {zeroStage: 3, config: {zero_optimization: {reduce_bucket_size: 1000}}}
  resources: {gpusPerNode: 4}
  output: {uri: pvc://work/out, mergeLora: false}
""")
    spec = load_job(path, Settings()).spec
    assert spec.method.gradient_checkpointing is True
    assert spec.dataset.format == "chat" and spec.training.max_seq_length == 512 and spec.training.packing is False
    assert spec.method.lora is not None and spec.method.lora.peft_target_modules == ["q_proj", "v_proj"]
    assert spec.training.learning_rate == 2e-4 and spec.training.global_batch_size == 8
    assert spec.deepspeed.zero_stage == 3
    assert spec.deepspeed.config == {"zero_optimization": {"reduce_bucket_size": 1000}}
    assert spec.output.merge_lora is False


BASE = {"model": {"uri": "pvc://models/m"}, "dataset": {"train": "pvc://data/t.jsonl", "format": "text"},
        "training": {"maxSteps": 10}, "output": {"uri": "pvc://work/out"}}


@pytest.mark.parametrize(("patch", "message"), [
    ({"training": {"maxSteps": 10, "microBatchSize": 0}}, "spec.training.microBatchSize must be >= 1 (got 0)"),
    ({"training": {"maxSteps": 10, "precision": "fp8"}},
     "spec.training.precision must be 'bf16', 'fp16' or 'fp32' (got 'fp8')"),
    ({"training": {"maxSteps": 10, "learningRate": "fast"}}, "spec.training.learningRate must be a number"),
    ({"dataset": {"train": "pvc://data/t.jsonl", "format": "csv"}},
     "spec.dataset.format must be 'text', 'prompt-completion', 'chat', 'classification' or "
     "'image-classification' (got 'csv')"),
    ({"deepspeed": {"zeroStage": 4}}, "spec.deepspeed.zeroStage must be <= 3 (got 4)"),
    ({"deepspeed": {"offload": "cpu", "zeroStage": 0}},
     "spec.deepspeed.offload may be cpu only with zeroStage 2 or 3"),
    ({"training": {"epocs": 2}}, "spec.training.epocs is not a field of spec.training; remove it "
                                 "(did you mean epochs?)"),
    ({"model": {}}, "spec.model.uri is required"),
])
def test_bad_values_name_the_field(patch: dict[str, Any], message: str, tmp_path: Path) -> None:
    path = write(tmp_path / "job.yaml", manifest({**BASE, **patch}))
    with pytest.raises(ConfigError) as error:
        load_job(path, Settings())
    assert str(error.value).startswith(f"{path}: invalid FineTuneJob spec: ")
    assert message in str(error.value)


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


def test_what_the_trainer_derives_from_the_spec() -> None:
    """One spec, one set of derived numbers: the batch layout, DeepSpeed's config, the schedule,
    the loop's cadence, the LoRA targets and the data keys all come from kubetune_api."""
    spec = parse_spec(SPEC)
    assert BatchLayout.for_spec(spec) == BatchLayout(micro_batch_size=4, world_size=16, grad_accum=1)
    ds = build_ds_config(spec)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        64, 4, 1)
    assert ds["gradient_clipping"] == 0.5 and ds["optimizer"]["params"]["lr"] == 2.0e-4
    assert ds["zero_optimization"] == {"stage": 3, "stage3_max_live_parameters": 1,
                                       "offload_optimizer": {"device": "cpu", "pin_memory": True},
                                       "offload_param": {"device": "cpu", "pin_memory": True}}
    schedule = lr_schedule(spec.training, 1000)
    assert (schedule.kind, schedule.peak_lr, schedule.warmup_steps) == ("cosine", 2.0e-4, 100)
    plan = LoopPlan.for_spec(spec, steps_per_epoch=40, checkpoint_dir="/scratch")
    assert (plan.total_steps, plan.eval_every_steps, plan.eval_at_start, plan.checkpoint_every_steps) == (
        120, 50, True, 500)
    assert spec.method.effective_lora is not None and spec.method.effective_lora.peft_target_modules == "all-linear"
    assert spec.dataset.record_keys() == {"messages": "conversation"}
    assert spec.checkpoint_uri == "s3://models/support-bot/checkpoints/"  # checkpoint.uri unset


@pytest.mark.parametrize("shape", ["operator", "manifest", "spec-only"])
def test_the_job_file(shape: str, tmp_path: Path) -> None:
    """The operator's config.json and a hand-written manifest are one format; a bare spec is not a job."""
    doc = {
        "operator": trainer_job(JobRef("bot", "ml", "u-1"), parse_spec(SPEC)).to_manifest(),
        "manifest": manifest(SPEC, name="bot", namespace="ml", uid="u-1"),
        "spec-only": {"spec": SPEC},
    }[shape]
    path = write(tmp_path / ("config.json" if shape == "operator" else "job.yaml"), doc)
    if shape == "spec-only":
        with pytest.raises(ConfigError, match=r"job.yaml: invalid FineTuneJob: apiVersion must be "
                                              r"kubetune.io/v1alpha1 \(got None\); kind must be FineTuneJob"):
            load_job(path, Settings())
        return
    job = load_job(path, Settings())
    assert job.spec == parse_spec(SPEC) and job.spec.training.epochs == 3
    assert job_record(job) == {"job": {"name": "bot", "namespace": "ml", "uid": "u-1"},
                               "spec": parse_spec(SPEC).to_manifest()}
    # The pod's environment names the job it reports to.
    job = load_job(path, Settings(job_name="other", namespace="team"))
    assert (job.metadata.name, job.metadata.namespace, job.metadata.uid) == ("other", "team", "u-1")
    assert redacted(job.spec.to_manifest())["env"] == [{"name": "HF_TOKEN", "value": "<redacted>"}]


def test_an_invalid_spec_is_one_line_naming_every_field(tmp_path: Path) -> None:
    bad = {**SPEC, "training": {**SPEC["training"], "microBatchSize": 0, "precision": "fp8"}}  # type: ignore[dict-item]
    path = write(tmp_path / "config.json", manifest(bad))
    with pytest.raises(ConfigError) as error:
        load_job(path, Settings())
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: invalid FineTuneJob spec: ")
    assert "spec.training.microBatchSize must be >= 1 (got 0)" in message
    assert "spec.training.precision must be 'bf16', 'fp16' or 'fp32' (got 'fp8')" in message


# --- a minimal job through the trainer's own entry: every effective setting is the CRD's default


def crd_defaults(node: dict[str, Any], path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """{field path: default} of every scalar field that declares one, below an object node of the
    CRD's schema (what `kubectl explain` prints as "Default: ...")."""
    found: dict[tuple[str, ...], Any] = {}
    for name, child in node.get("properties", {}).items():
        if "default" in child and not isinstance(child["default"], dict | list):
            found[(*path, name)] = child["default"]
        if child.get("type") == "object":
            found.update(crd_defaults(child, (*path, name)))
    return found


UNSET = object()


def spec_value(spec: FineTuneJobSpec, path: tuple[str, ...]) -> Any:
    """The parsed value at a camelCase field path; UNSET where an enclosing object is unset."""
    value: Any = spec
    for name in path:
        if value is None:
            return UNSET
        field = next(f for f, info in type(value).model_fields.items() if (info.alias or f) == name)
        value = getattr(value, field)
    return value


def test_a_minimal_job_runs_with_exactly_the_defaults_the_crd_declares(tiny_model_dir: Path) -> None:
    from kubetune_trainer.modeling import load_model

    job = load_job(MINIMAL, Settings())  # the trainer's own entry (python -m kubetune_trainer reads it so)
    crd = yaml.safe_load(CRD.read_text().split("\n", 2)[2])
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    defaults = crd_defaults(schema)
    # Every part of the spec that has defaults is covered.
    assert {path[0] for path in defaults} == {"task", "model", "dataset", "method", "training", "evaluation",
                                              "deepspeed", "resources", "checkpoint", "output", "storage",
                                              "runPolicy", "preflight"}, sorted(defaults)
    for path, default in defaults.items():
        value = spec_value(job.spec, path)
        if value is UNSET:
            # Inside an object the minimal job leaves out (method.lora, method.freeze,
            # evaluation.earlyStopping): a job that sets it gets these (checked below).
            assert path[:2] in {("method", "lora"), ("method", "freeze"), ("evaluation", "earlyStopping")}, path
            continue
        assert value == default, f"spec.{'.'.join(path)}: the trainer uses {value!r}, the CRD says {default!r}"

    # What the trainer builds from them.
    spec, t, d = job.spec, defaults, job.spec.deepspeed
    ds = build_ds_config(spec)
    assert ds["zero_optimization"] == {"stage": t[("deepspeed", "zeroStage")]}  # offload "none": nothing offloaded
    assert d.offload == t[("deepspeed", "offload")] == "none" and ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["optimizer"]["params"]["lr"] == t[("training", "learningRate")]
    assert ds["optimizer"]["params"]["weight_decay"] == t[("training", "weightDecay")]
    assert ds["gradient_clipping"] == t[("training", "gradientClipping")]
    assert ds["train_micro_batch_size_per_gpu"] == t[("training", "microBatchSize")]
    assert ds["bf16"]["enabled"] is (t[("training", "precision")] == "bf16")
    # One node with one GPU (the defaults): one process, no accumulation.
    assert BatchLayout.for_spec(spec) == BatchLayout(t[("training", "microBatchSize")], 1, 1)
    schedule = lr_schedule(spec.training, 100)
    assert schedule.kind == t[("training", "lrScheduler")] and schedule.warmup_steps == 0  # neither warmup field
    plan = LoopPlan.for_spec(spec, steps_per_epoch=100, checkpoint_dir="/scratch")
    assert plan.total_steps == 100 and plan.seed == t[("training", "seed")]
    assert (plan.eval_every_steps, plan.eval_at_start) == (0, False)  # evaluate only after the last step
    assert plan.checkpoint_every_steps == t[("checkpoint", "everySteps")]

    assert spec.task == t[("task",)] and spec.metric == "eval_loss"  # the causal-lm default
    assert spec.output_select == "last"  # no evaluation records in the minimal job
    stopping = parse_spec({**spec.to_manifest(), "dataset": {**spec.dataset.to_manifest(), "evalSplit": 0.1},
                           "evaluation": {"earlyStopping": {"patience": 2}}})
    assert stopping.evaluation.early_stopping is not None
    assert stopping.evaluation.early_stopping.min_delta == t[("evaluation", "earlyStopping", "minDelta")]
    assert stopping.output_select == "best"  # with evaluation records
    freezing = parse_spec({**spec.to_manifest(), "method": {"freeze": {"modules": ["x"]}}})
    assert freezing.method.freeze is not None
    assert (freezing.method.freeze.embeddings, freezing.method.freeze.bottom_layers) == (
        t[("method", "freeze", "embeddings")], t[("method", "freeze", "bottomLayers")])

    model = load_model(str(tiny_model_dir), spec)
    assert model.is_gradient_checkpointing is t[("method", "gradientCheckpointing")]
    assert next(model.parameters()).dtype == torch_dtype(t[("training", "precision")])

    lora = parse_spec({**spec.to_manifest(), "method": {"type": "lora"}})
    peft = load_model(str(tiny_model_dir), lora).peft_config["default"]
    assert (peft.r, peft.lora_alpha, peft.lora_dropout) == (
        t[("method", "lora", "r")], t[("method", "lora", "alpha")], t[("method", "lora", "dropout")])
    # targetModules unset: every linear layer but the output head, as the CRD's description says.
    assert "all-linear" in schema["properties"]["method"]["properties"]["lora"]["properties"]["targetModules"][
        "description"]
    adapted = {name.rsplit(".", 1)[-1] for name in peft.target_modules}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def torch_dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def test_settings_from_the_environment() -> None:
    settings = settings_from_env({"KUBETUNE_CONFIG": "/etc/kubetune/config.json", "KUBETUNE_JOB_NAME": "bot",
                                  "KUBETUNE_NAMESPACE": "ml", "KUBERNETES_SERVICE_HOST": "10.0.0.1",
                                  "KUBETUNE_UPLOAD_MAX_BANDWIDTH_MB": "50", "KUBETUNE_UPLOAD_CHUNK_MB": "16",
                                  "KUBETUNE_ATTEMPT": "3"})
    assert settings.in_cluster and settings.config_path == "/etc/kubetune/config.json"
    assert settings.upload_max_bandwidth == 50 * 2**20 and settings.upload_chunk_bytes == 16 * 2**20
    assert settings.attempt == 3
    assert not settings_from_env({}).in_cluster and settings_from_env({}).attempt == 1
    with pytest.raises(ConfigError, match="KUBETUNE_UPLOAD_CONCURRENCY must be a number"):
        settings_from_env({"KUBETUNE_UPLOAD_CONCURRENCY": "many"})
    with pytest.raises(ConfigError, match="KUBETUNE_UPLOAD_CHUNK_MB must be >= 5"):
        settings_from_env({"KUBETUNE_UPLOAD_CHUNK_MB": "1"})
