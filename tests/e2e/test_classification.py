"""End to end on the local cluster: an encoder fine-tuned for sequence classification through the
operator, on two node-agent pods under ZeRO-2, judged and stopped by its evaluation metric.

`examples/classify-sentiment.yaml` with this test's bucket: in the short run a tiny random
BERT (the MiniLM tokenizer) made to overfit a few records, so that early stopping ends it; in
the long run (`make test-long`) all-MiniLM-L6-v2 on a few thousand rotten-tomatoes snippets,
which must learn.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from classify import held_out_metric, sentiment_job
from harness import Jobs, committed_steps, diagnose, kubectl_wait, logs

from kubetune_testbed.datasets import write_sentiment_dataset
from kubetune_testbed.s3folders import delete_prefix, download_prefix, upload_folder
from kubetune_trainer.logs import parse_log_lines

pytestmark = pytest.mark.cluster

@pytest.fixture(scope="module")
def bucket(cluster: Any) -> Iterator[str]:
    s3 = cluster.s3_client()
    name = f"classify-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=name)
    yield name
    delete_prefix(s3, name)
    s3.delete_bucket(Bucket=name)


def test_an_overfitting_classifier_stops_early_and_publishes_its_best_checkpoint(
        cluster: Any, e2e: Jobs, bucket: str, tmp_path: Path) -> None:
    from kubetune_testbed.models import ensure_tiny_bert

    s3 = cluster.s3_client()
    upload_folder(s3, Path(ensure_tiny_bert()), bucket, "models/tiny-bert/")
    data = tmp_path / "few"
    write_sentiment_dataset(data, held_out=40, train=32)
    upload_folder(s3, data, bucket, "few/")
    # Many epochs of 32 records at a high learning rate: the eval loss soon rises, and stops it.
    job = sentiment_job("overfit", bucket, "models/tiny-bert", "few",
                        training={"maxSteps": 200, "learningRate": 5e-3, "warmupSteps": 0, "evalEverySteps": 4,
                                  "microBatchSize": 4, "globalBatchSize": 8, "maxSeqLength": 32},
                        evaluation={"metric": "eval_loss", "earlyStopping": {"patience": 2}},
                        checkpoint={"everySteps": 4, "keepLast": 1})
    e2e.apply(job)
    done = kubectl_wait(cluster, e2e.ns, "overfit", "Succeeded", timeout=600)
    assert done.returncode == 0, diagnose(cluster, e2e, "overfit") + done.stderr

    status = e2e.status("overfit")
    evaluation = status["evaluation"]
    stopped, best = evaluation["stoppedEarly"], evaluation["best"]
    assert evaluation["metric"] == "eval_loss"
    assert stopped["step"] < 200 and stopped["step"] == status["progress"]["step"]
    assert best["step"] < stopped["step"] and stopped["step"] - best["step"] == 2 * 4  # patience 2, every 4
    assert {"eval_loss", "accuracy", "f1_macro"} <= set(evaluation["latest"]["metrics"])
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "EarlyStopped" and "eval_loss did not improve" in succeeded["message"]
    assert any(e["reason"] == "EarlyStopped" for e in e2e.events("overfit"))
    params = status["parameters"]
    assert 0 < params["trainable"] == params["total"]  # a full fine-tune trains every weight
    table = cluster.kubectl("get", "ftj", "overfit", "-n", e2e.ns).stdout.splitlines()
    assert table[0].split()[4] == "BEST" and float(table[1].split()[4]) == pytest.approx(best["value"], rel=1e-3)

    # The best checkpoint outlived keepLast 1 beside the last one, and is what was published.
    prefix = "output/overfit/checkpoints/"
    assert committed_steps(s3, bucket, prefix) == [best["step"], stopped["step"]]
    download_prefix(s3, bucket, "output/overfit/", tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["step"] == best["step"]
    assert manifest["selected"] == {"select": "best", "metric": "eval_loss", "value": best["value"]}
    recomputed = held_out_metric(tmp_path / "out", data / "eval.jsonl", "eval_loss", 4, 32)
    assert recomputed == pytest.approx(best["value"], rel=1e-4)
    # metrics.jsonl beside the checkpoints: one line per evaluation, with the confusion matrix.
    body = s3.get_object(Bucket=bucket, Key=prefix + "metrics.jsonl")["Body"].read().decode()
    lines = [json.loads(line) for line in body.splitlines()]
    assert [line["step"] for line in lines] == list(range(0, stopped["step"] + 1, 4))
    assert sum(map(sum, lines[-1]["confusion_matrix"])) == 40
    events = parse_log_lines(logs(cluster, e2e.ns, "overfit-worker-0"))
    assert [e["world_size"] for e in events if e["event"] == "rendezvous"] == [2]


@pytest.mark.long
def test_minilm_learns_sentiment_on_two_nodes(cluster: Any, e2e: Jobs, bucket: str, tmp_path: Path) -> None:
    """The acceptance run: all-MiniLM-L6-v2 on 2,000 snippets, held-out accuracy at least 15 points
    above the untrained head's, a published model that predicts label names."""
    from kubetune_testbed.models import minilm_dir

    s3 = cluster.s3_client()
    upload_folder(s3, minilm_dir(), bucket, "models/minilm/")
    data = tmp_path / "sentiment"
    write_sentiment_dataset(data, held_out=400, train=2000)
    upload_folder(s3, data, bucket, "sentiment/")
    e2e.apply(sentiment_job("minilm", bucket, "models/minilm", "sentiment"))
    done = kubectl_wait(cluster, e2e.ns, "minilm", "Succeeded", timeout=3000)
    assert done.returncode == 0, diagnose(cluster, e2e, "minilm") + done.stderr

    events = parse_log_lines(logs(cluster, e2e.ns, "minilm-worker-0"))
    evals = [e for e in events if e["event"] == "eval"]
    before, after = evals[0], evals[-1]
    print(f"minilm: accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, "
          f"f1_macro {before['f1_macro']:.3f} -> {after['f1_macro']:.3f}")
    status = e2e.status("minilm")["evaluation"]
    assert status["metric"] == "f1_macro" and {"accuracy", "f1_macro"} <= set(status["latest"]["metrics"])
    assert status["latest"]["metrics"]["accuracy"] >= before["accuracy"] + 0.15, (before, status)

    from transformers import pipeline

    download_prefix(s3, bucket, "output/minilm/", tmp_path / "out")
    classify = pipeline("text-classification", model=str(tmp_path / "out"), device="cpu")
    answers = classify(["A warm, funny and beautifully acted film.", "A tedious, joyless mess."])
    assert [a["label"] for a in answers] == ["fresh", "rotten"], answers
