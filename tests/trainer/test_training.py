"""A real run without the cluster: one process, everything on pvc:// claims (local folders here).

The same protocol as on S3, through the folder store: committed checkpoints
with manifests, retention, the exported model with its manifest, and a second
start that finds the finished job's last checkpoint and only re-exports. The
multi-node runs against MinIO are in test_streaming.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Run, launch, python_module, write_config, write_jsonl

from kubetune_trainer.__main__ import main

SENTENCES = ["the cat sat on the mat.", "a dog ran in the park.", "my bird can sing a song."]


def assert_ok(run: Run) -> None:
    assert run.returncodes and all(rc == 0 for rc in run.returncodes), run.output[-4000:]


def test_single_process_on_pvc_claims_commits_and_exports(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "pvc"
    for claim in ("models", "data", "work"):
        (root / claim).mkdir(parents=True)
    (root / "models" / "tiny").symlink_to(tiny_model_dir)
    write_jsonl(root / "data" / "train.jsonl", [{"text": " ".join([SENTENCES[i % 3]] * 4)} for i in range(24)])
    manifest = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "local"},
                "spec": {"model": {"uri": "pvc://models/tiny"},
                         "dataset": {"train": "pvc://data/train.jsonl", "format": "text"},
                         "training": {"maxSteps": 4, "learningRate": 1e-2, "microBatchSize": 2,
                                      "globalBatchSize": 4, "maxSeqLength": 32, "precision": "fp32",
                                      "logEverySteps": 1},
                         "deepspeed": {"zeroStage": 1},
                         "resources": {"gpusPerNode": 0},
                         "checkpoint": {"everySteps": 2, "keepLast": 2},  # default: <output.uri>/checkpoints/
                         "output": {"uri": "pvc://work/model"}}}
    config = write_config(tmp_path / "job.json", manifest)
    env = {"KUBETUNE_PVC_ROOT": str(root), "KUBETUNE_SCRATCH_DIR": str(tmp_path / "scratch")}
    first = launch([python_module(config)], envs=[env])
    assert_ok(first)
    losses = first.losses()
    assert sorted(losses) == [1, 2, 3, 4] and losses[4] < losses[1]

    out = root / "work" / "model"
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step-")) == ["step-00000002",
                                                                                    "step-00000004"]
    # Beside them, the TensorBoard events of the run: train loss and learning rate of each step.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(ckpts / "tensorboard")).Reload()
    assert {"train/loss", "train/learning_rate"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    committed = json.loads((ckpts / "step-00000004" / "manifest.json").read_text())
    assert {f["name"] for f in committed["files"]} == {
        "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "rng-rank00000.pt"}
    output = json.loads((out / "manifest.json").read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f["name"] for f in output["files"]}
    # Tied input and output embeddings are written once, as in the base model.
    base = (tiny_model_dir / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 1.2 * base
    assert output["config"]["spec"]["training"]["maxSteps"] == 4

    # Started again (as after a crash while exporting), the job trains no more and exports again.
    second = launch([python_module(config)], envs=[env])
    assert_ok(second)
    assert second.of("resumed")[0]["step"] == 4 and not second.of("step")
    assert second.of("output_published")


# ZeRO-2 in `make test-long`: ZeRO-3 is the stage that splits the adapter across ranks.
@pytest.mark.parametrize("zero_stage", [pytest.param(2, marks=pytest.mark.long), 3])
def test_lora_checkpoints_hold_only_the_adapter_and_resume_exactly(zero_stage: int, tiny_model_dir: Path,
                                                                   tmp_path: Path) -> None:
    root = tmp_path / "pvc"
    for claim in ("models", "data", "work"):
        (root / claim).mkdir(parents=True)
    (root / "models" / "tiny").symlink_to(tiny_model_dir)
    write_jsonl(root / "data" / "train.jsonl", [{"text": " ".join([SENTENCES[i % 3]] * 4)} for i in range(48)])
    manifest = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "lora"},
                "spec": {"model": {"uri": "pvc://models/tiny"},
                         "dataset": {"train": "pvc://data/train.jsonl", "format": "text"},
                         "method": {"type": "lora", "gradientCheckpointing": False,
                                    "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "targetModules": ["q_proj", "v_proj"]}},
                         "training": {"maxSteps": 6, "learningRate": 1e-2, "microBatchSize": 2,
                                      "globalBatchSize": 4, "maxSeqLength": 32, "precision": "fp32",
                                      "logEverySteps": 1},
                         "deepspeed": {"zeroStage": zero_stage},
                         "checkpoint": {"everySteps": 3, "keepLast": 2},
                         "output": {"uri": "pvc://work/model"}}}
    config = write_config(tmp_path / "job.json", manifest)
    env = {"KUBETUNE_PVC_ROOT": str(root), "KUBETUNE_SCRATCH_DIR": str(tmp_path / "scratch")}
    first = launch([python_module(config)], envs=[env])
    assert_ok(first)

    ckpts = root / "work" / "model" / "checkpoints"
    import torch

    states = next((ckpts / "step-00000003").glob("*model_states.pt"))  # mp_rank_00_ (ZeRO-2) or zero_pp_rank_0_
    saved = torch.load(states, weights_only=False)["module"]
    adapters = {k for k in saved if ".lora_" in k}
    assert len(adapters) == 2 * 2 * 2  # 2 layers x (q_proj, v_proj) x (A, B)
    # No frozen base weight, except DeepSpeed's copy of the output head when it is tied to the
    # (frozen, left out) input embeddings under another name.
    assert set(saved) - adapters <= {"base_model.model.lm_head.weight"}, sorted(set(saved) - adapters)

    # Un-commit step 6, as a crash before its manifest would: the next start resumes from step 3
    # (frozen weights from the model, the adapter and its optimizer state from the checkpoint)
    # and retraces steps 4 to 6 exactly, dropout included.
    (ckpts / "step-00000006" / "manifest.json").unlink()
    second = launch([python_module(config)], envs=[env])
    assert_ok(second)
    assert second.of("resumed")[0]["step"] == 3
    again = second.losses()
    assert sorted(again) == [4, 5, 6]
    for step, loss in again.items():
        assert loss == pytest.approx(first.losses()[step], rel=1e-4), (step, loss, first.losses()[step])


def test_bad_input_ends_with_one_line_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest a developer writes by hand is checked exactly as the operator's is."""
    config: dict[str, Any] = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x"},
                              "spec": {"model": {"uri": "pvc://m/model"},
                                       "dataset": {"train": "pvc://d/t.jsonl", "format": "text"},
                                       "output": {"uri": "pvc://o/out"}, "training": {"epochs": 0}}}
    path = write_config(tmp_path / "config.json", config)
    assert main([str(path)]) == 2
    assert capsys.readouterr().err == ("kubetune-trainer: error: "
                                       f"{path}: invalid FineTuneJob spec: spec.training.epochs must be >= 1 (got 0)\n")
    assert main([]) == 2
