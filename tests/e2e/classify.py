"""The sentiment classifier the end-to-end tests fine-tune (examples/classify-sentiment.yaml with a
test's bucket), and its metric recomputed from a published model with plain transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from harness import S3_SECRET, deep_merge

from kubetune_testbed import REPO

EXAMPLE = REPO / "examples" / "classify-sentiment.yaml"


def sentiment_job(name: str, bucket: str, model: str, data: str, **spec: Any) -> dict[str, Any]:
    job = yaml.safe_load(EXAMPLE.read_text())
    job["metadata"]["name"] = name
    s = job["spec"]
    s["model"]["uri"] = f"s3://{bucket}/{model}/"
    s["dataset"].update(train=f"s3://{bucket}/{data}/train.jsonl", eval=f"s3://{bucket}/{data}/eval.jsonl")
    s["output"]["uri"] = f"s3://{bucket}/output/{name}/"
    s["storage"] = {"credentialsSecret": S3_SECRET, "addressingStyle": "path"}
    s["env"] = [{"name": "KUBETUNE_STATUS_INTERVAL_SECONDS", "value": "1"}]
    job["spec"] = deep_merge(s, spec)
    training = job["spec"]["training"]
    if "maxSteps" in training:  # instead of the example's epochs
        training.pop("epochs", None)
    if "warmupSteps" in training:  # instead of the example's warmupRatio
        training.pop("warmupRatio", None)
    return dict(job)


def held_out_metric(model_dir: Path, eval_file: Path, metric: str, micro_batch_size: int, max_length: int) -> float:
    """The metric of the published model over the evaluation records, with plain transformers and
    scikit-learn, in one process."""
    import torch
    from sklearn.metrics import f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in eval_file.read_text().splitlines()]
    losses, predicted = [], []
    with torch.no_grad():
        for start in range(0, len(rows), micro_batch_size):
            batch = rows[start:start + micro_batch_size]
            inputs = tokenizer([r["text"] for r in batch], truncation=True, max_length=max_length, padding=True,
                               return_tensors="pt")
            labels = torch.tensor([model.config.label2id[r["label"]] for r in batch])
            logits = model(**inputs).logits
            losses.append(torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item())
            predicted += logits.argmax(-1).tolist()
    truth = [model.config.label2id[r["label"]] for r in rows]
    if metric == "eval_loss":
        return sum(losses) / len(rows)
    return float(f1_score(truth, predicted, average="macro"))
