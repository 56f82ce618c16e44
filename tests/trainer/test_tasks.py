"""Classification tasks: their records, labels and heads; frozen layers; real training runs.

Real runs train without the cluster, on pvc:// claims (local folders here): a
tiny random BERT classifier with frozen bottom layers in one process, and a
small ResNet on scikit-learn's digit images in two ranks over gloo.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Run, launch, python_module, torchrun_nodes, write_config, write_jsonl

from kubetune_api import FreezeSpec, parse_spec
from kubetune_trainer.data.images import image_samples
from kubetune_trainer.data.labels import LabelIds, label_names
from kubetune_trainer.data.sources import LOCAL_FILES, Record, read_records
from kubetune_trainer.errors import ConfigError, DataError
from kubetune_trainer.modeling import freeze, load_model, transformer_blocks


def records(*rows: dict[str, Any]) -> list[Record]:
    return [Record(f"train.jsonl:{i + 1}", row, "train.jsonl") for i, row in enumerate(rows)]


def test_labels_come_from_the_training_records_sorted_or_from_the_spec() -> None:
    found = records({"label": "rotten"}, {"label": "fresh"}, {"label": "fresh"})
    assert label_names(None, found, "label") == ["fresh", "rotten"]
    assert label_names(None, records({"label": 10}, {"label": 2}), "label") == ["2", "10"]  # numerically
    assert label_names(["rotten", "fresh"], found, "label") == ["rotten", "fresh"]  # declared order = ids
    declared = LabelIds(["rotten", "fresh"], declared=True)
    assert [declared.of(r, "label") for r in found] == [0, 1, 1]
    assert declared.of(Record("eval.jsonl:3", {"label": 1}), "label") == 1  # an integer is a class id


@pytest.mark.parametrize(("row", "declared", "message"), [
    ({"text": "no label"}, None, r"^eval.jsonl:7: no label: field 'label' is missing"),
    ({"label": "meh"}, None, r"^eval.jsonl:7: label 'meh' is not one of the labels of the training records "
                             r"\(fresh, rotten\)"),
    ({"label": "meh"}, ["fresh", "rotten"], r"^eval.jsonl:7: label 'meh' is not one of spec.dataset.labels "
                                            r"\(fresh, rotten\); fix the record or add it to spec.dataset.labels"),
    ({"label": 5}, ["fresh", "rotten"], r"^eval.jsonl:7: label id 5 is outside spec.dataset.labels"),
    ({"label": True}, None, r"^eval.jsonl:7: field 'label' must be a label name"),
])
def test_a_bad_label_names_its_record(row: dict[str, Any], declared: list[str] | None, message: str) -> None:
    labels = LabelIds(declared or ["fresh", "rotten"], declared=declared is not None)
    with pytest.raises(DataError, match=message):
        labels.of(Record("eval.jsonl:7", row), "label")


def png(color: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (8, 8), color).save(out, format="PNG")
    return out.getvalue()


def test_images_as_bytes_as_datasets_objects_or_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png(10))
    path = write_jsonl(tmp_path / "train.jsonl", [{"image": "img/a.png", "label": "a"}])
    found = [*read_records(str(path)), Record("t.parquet row 1", {"image": png(20), "label": "b"}, "t.parquet"),
             Record("t.parquet row 2", {"image": {"bytes": png(30), "path": None}, "label": "b"}, "t.parquet")]
    labels = LabelIds(label_names(None, found, "label"), declared=False)
    samples = image_samples(found, {"image": "image", "label": "label"}, labels, LOCAL_FILES)
    assert [s.label for s in samples] == [0, 1, 1] and samples[0].image == png(10)
    broken = Record("t.parquet row 9", {"image": b"not an image", "label": "a"}, "t.parquet")
    with pytest.raises(DataError, match=r"^t.parquet row 9: the image does not decode"):
        image_samples([broken], {"image": "image", "label": "label"}, labels, LOCAL_FILES)


def test_augmentation_changes_training_images_only(tiny_resnet_dir: Path) -> None:
    from PIL import Image
    from transformers import AutoImageProcessor

    from kubetune_trainer.data.images import ImageBatches, ImageSample

    picture = io.BytesIO()
    Image.linear_gradient("L").resize((32, 32)).save(picture, format="PNG")
    samples = [ImageSample(picture.getvalue(), 0, "mem:1")] * 4
    batches = ImageBatches(AutoImageProcessor.from_pretrained(tiny_resnet_dir), augment=True)
    torch.manual_seed(0)
    evaluated, trained = batches(samples, False)["pixel_values"], batches(samples, True)["pixel_values"]
    assert all(torch.equal(evaluated[0], image) for image in evaluated)  # never augmented
    assert not all(torch.equal(evaluated[0], image) for image in trained)  # random crops and flips
    assert trained.shape == evaluated.shape == (4, 3, 32, 32)


# --- frozen layers


def bert_spec(**method: Any) -> Any:
    return parse_spec({"task": "sequence-classification", "model": {"uri": "pvc://m/m"},
                       "dataset": {"train": "pvc://d/t.jsonl", "format": "classification"},
                       "method": {"gradientCheckpointing": False, **method}, "training": {"maxSteps": 1,
                       "precision": "fp32"}, "output": {"uri": "pvc://o/o"}})


def frozen_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def test_freezing_finds_the_blocks_and_embeddings_of_any_model(tiny_bert_dir: Path, tiny_model_dir: Path) -> None:
    bert = load_model(str(tiny_bert_dir), bert_spec(freeze={"embeddings": True, "bottomLayers": 2}), ["a", "b"])
    frozen = frozen_names(bert)
    assert {n.split(".")[1] for n in frozen} == {"embeddings", "encoder"}
    assert {n.split(".")[3] for n in frozen if ".encoder." in n} == {"0", "1"}  # the first two blocks
    assert not any(n.startswith(("classifier", "bert.pooler")) or ".layer.2." in n for n in frozen)

    llama_spec = parse_spec({"model": {"uri": "pvc://m/m"}, "dataset": {"train": "pvc://d/t.jsonl", "format": "text"},
                             "training": {"maxSteps": 1}, "output": {"uri": "pvc://o/o"}})
    llama = load_model(str(tiny_model_dir), llama_spec)
    assert [type(b).__name__ for b in transformer_blocks(llama)] == ["LlamaDecoderLayer"] * 2
    freeze(llama, FreezeSpec(modules=["*.layers.1.mlp.*"]))
    assert frozen_names(llama) == {f"model.layers.1.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    with pytest.raises(ConfigError, match=r"bottomLayers is 3, but the model has 2 blocks"):
        freeze(llama, FreezeSpec(bottom_layers=3))
    with pytest.raises(ConfigError, match=r"'\*.attention.\*' matches no parameter of the model"):
        freeze(llama, FreezeSpec(modules=["*.attention.*"]))


SENTENCES = {"good": ["a great film, loved it", "wonderful and warm", "a delight from start to end"],
             "bad": ["a dull mess", "boring and far too long", "i want my time back"]}


def classify_job(work: Path, model: str, **spec: Any) -> Path:
    manifest = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "classify"},
                "spec": {"task": "sequence-classification", "model": {"uri": model},
                         "dataset": {"train": "pvc://data/train.jsonl", "evalSplit": 0.2, "format": "classification"},
                         "method": {"gradientCheckpointing": False},
                         "training": {"maxSteps": 6, "learningRate": 5e-3, "microBatchSize": 4, "maxSeqLength": 16,
                                      "precision": "fp32", "evalEverySteps": 3, "logEverySteps": 1},
                         "deepspeed": {"zeroStage": 2}, "resources": {"gpusPerNode": 0},
                         "checkpoint": {"everySteps": 3}, "output": {"uri": "pvc://work/model"}, **spec}}
    return write_config(work / "job.json", manifest)


def claims(work: Path, **models: Path) -> Path:
    root = work / "pvc"
    for claim in ("data", "work"):
        (root / claim).mkdir(parents=True)
    for name, path in models.items():
        (root / name).symlink_to(path)
    rows = [{"text": f"{text} ({i})", "label": label} for i in range(8) for label, texts in SENTENCES.items()
            for text in texts]
    write_jsonl(root / "data" / "train.jsonl", rows)
    return root


def run_env(root: Path, work: Path) -> dict[str, str]:
    return {"KUBETUNE_PVC_ROOT": str(root), "KUBETUNE_SCRATCH_DIR": str(work / "scratch")}


def assert_ok(run: Run) -> None:
    assert run.returncodes and all(rc == 0 for rc in run.returncodes), run.output[-4000:]


def test_frozen_layers_stay_bit_identical_and_the_rest_trains(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    root = claims(tmp_path, bert=tiny_bert_dir)
    job = classify_job(tmp_path, "pvc://bert", method={"gradientCheckpointing": False,
                                                       "freeze": {"embeddings": True, "bottomLayers": 2}})
    run = launch([python_module(job)], envs=[run_env(root, tmp_path)])
    assert_ok(run)
    base = load_file(tiny_bert_dir / "model.safetensors")
    out = load_file(root / "work" / "model" / "model.safetensors")
    frozen = [k for k in base if k.startswith("embeddings.") or k.startswith(("encoder.layer.0.", "encoder.layer.1."))]
    trained = [k for k in base if k.startswith(("encoder.layer.2.", "encoder.layer.3."))]
    assert frozen and trained
    for key in frozen:
        assert torch.equal(out[f"bert.{key}"], base[key]), key
    assert all(not torch.equal(out[f"bert.{key}"], base[key]) for key in trained if key.endswith("weight"))
    setup = run.of("setup")[0]
    frozen_count = sum(base[k].numel() for k in frozen)
    assert setup["trainable_params"] == setup["params"] - frozen_count
    config = json.loads((root / "work" / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "bad", "1": "good"}  # the published model predicts label names


def test_a_lora_classifier_trains_its_new_head_and_merges(tiny_bert_dir: Path, tmp_path: Path) -> None:
    root = claims(tmp_path, bert=tiny_bert_dir)
    job = classify_job(tmp_path, "pvc://bert", method={"type": "lora", "gradientCheckpointing": False,
                                                       "lora": {"r": 4, "alpha": 8, "targetModules": ["query", "value"]}},
                       output={"uri": "pvc://work/model", "mergeLora": True})
    run = launch([python_module(job)], envs=[run_env(root, tmp_path)])
    assert_ok(run)
    setup = run.of("setup")[0]
    assert 0 < setup["trainable_params"] < setup["params"] / 10  # adapters and the new head
    from transformers import AutoModelForSequenceClassification

    out = root / "work" / "model"
    assert not (out / "adapter_config.json").exists()  # merged: plain transformers loads it
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "bad", 1: "good"} and model.classifier.out_features == 2

    # Started again (as after a crash while exporting): no more training, the same model published,
    # from the best checkpoint the first attempt committed.
    published = json.loads((out / "manifest.json").read_text())
    again = launch([python_module(job)], envs=[run_env(root, tmp_path)])
    assert_ok(again)
    assert not again.of("step") and again.of("resumed")[0]["step"] == 6
    republished = json.loads((out / "manifest.json").read_text())
    assert (republished["step"], republished.get("selected")) == (published["step"], published.get("selected"))


def test_digit_images_on_two_ranks(tiny_resnet_dir: Path, tmp_path: Path) -> None:
    from kubetune_testbed.datasets import write_digits_dataset

    root = tmp_path / "pvc"
    (root / "work").mkdir(parents=True)
    (root / "resnet").symlink_to(tiny_resnet_dir)
    write_digits_dataset(root / "digits")
    manifest = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "digits"},
                "spec": {"task": "image-classification", "model": {"uri": "pvc://resnet"},
                         "dataset": {"train": "pvc://digits/train.parquet", "eval": "pvc://digits/eval.parquet",
                                     "format": "image-classification"},
                         "method": {"gradientCheckpointing": False},
                         "training": {"maxSteps": 120, "learningRate": 3e-3, "warmupSteps": 10, "microBatchSize": 16,
                                      "precision": "fp32", "evalEverySteps": 60, "logEverySteps": 20},
                         "deepspeed": {"zeroStage": 1}, "resources": {"nodes": 2, "gpusPerNode": 0},
                         "checkpoint": {"everySteps": 60}, "output": {"uri": "pvc://work/model"}}}
    job = write_config(tmp_path / "job.json", manifest)
    env = run_env(root, tmp_path)
    run = launch(torchrun_nodes(job), envs=[env, env])
    assert_ok(run)
    final = run.of("eval")[-1]
    print(f"digits: accuracy {run.of('eval')[0]['accuracy']:.3f} -> {final['accuracy']:.3f}")
    assert final["step"] == 120 and final["accuracy"] >= 0.9, run.of("eval")
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(root / "work" / "model")
    processor = AutoImageProcessor.from_pretrained(root / "work" / "model")
    import pyarrow.parquet as pq
    from PIL import Image

    rows = pq.read_table(root / "digits" / "eval.parquet").to_pylist()[:32]
    images = [Image.open(io.BytesIO(r["image"])).convert("RGB") for r in rows]
    with torch.no_grad():
        predicted = model(**processor(images=images, return_tensors="pt")).logits.argmax(-1)
    names = [model.config.id2label[int(i)] for i in predicted]
    assert sum(name == str(r["label"]) for name, r in zip(names, rows, strict=True)) >= 28
