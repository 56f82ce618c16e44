"""The chat data set of the demo and the tests: chatterbot-corpus question/answer pairs.

`chatterbot-corpus` (BSD, from PyPI: a dependency of the test bed) ships about
2,000 English question/answer pairs in YAML. Each pair becomes one chat record
in the `chat` format of a FineTuneJob (a short system prompt, the question, the
answer); a fixed, seeded shuffle holds out the first `held_out` pairs for
evaluation, so the eval set never overlaps the training set.

    python -m kubetune_testbed.datasets OUT_DIR     # writes OUT_DIR/train.jsonl and OUT_DIR/eval.jsonl
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kubetune_testbed.datasets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--held-out", type=int, default=16, help="pairs kept for evaluation (default 16)")
    args = parser.parse_args(argv)
    for path in write_chat_dataset(args.out, args.held_out):
        print(f"{path}: {sum(1 for _ in path.open())} records")


if __name__ == "__main__":
    main()
