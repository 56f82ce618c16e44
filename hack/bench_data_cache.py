"""What the tokenized-data cache saves each training process at start-up, by data set size.

For chat data sets of --records records (the quick start's chatterbot pairs, repeated with a
counter so that no two are the same) and SmolLM2-135M-Instruct's tokenizer (the quick start's),
it measures in fresh processes, one at a time:

  tokenize   what every rank of every attempt did before the preflight (and still does with
             spec.preflight.enabled false): read the JSONL file, tokenize every record
             (build_datasets, the trainer's own code);
  preflight  the same, plus writing the cache entry (data/cache.py) to a store: what the
             preflight pod does once per data set;
  cache      what a rank does now: fetch the entry into its node's scratch folder (checking
             each shard's SHA-256) and memory-map it (cached_datasets), then read the samples
             of its first 100 micro-batches.

Each row prints the seconds and the process's peak RSS growth. The store is a local folder (a
pvc:// claim); from S3 the fetch adds the download (the shards are about 8 bytes a token).

Usage: .venv/bin/python hack/bench_data_cache.py [--records 20000 200000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubetune_api import parse_spec
from kubetune_testbed.datasets import chat_record, chatterbot_pairs
from kubetune_testbed.models import ensure_smollm2

MODES = ("tokenize", "preflight", "cache")


def write_records(path: Path, count: int) -> None:
    pairs = chatterbot_pairs()
    with path.open("w") as out:
        for i in range(count):
            question, answer = pairs[i % len(pairs)]
            out.write(json.dumps(chat_record(f"{question} (#{i})", answer)) + "\n")


def spec() -> Any:
    return parse_spec({"model": {"uri": "pvc://m/model"}, "dataset": {"train": "pvc://d/train.jsonl", "format": "chat"},
                       "training": {"maxSteps": 100, "microBatchSize": 4, "maxSeqLength": 512},
                       "resources": {"gpusPerNode": 0}, "output": {"uri": "pvc://o/out"}})


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(mode: str, data: Path, store_dir: Path, scratch: Path) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    from kubetune_trainer.data import (
        BatchLayout,
        DataPosition,
        build_datasets,
        cached_datasets,
        micro_batches,
    )
    from kubetune_trainer.data.cache import fetch_entry, publish_entry
    from kubetune_trainer.data.sources import LOCAL_FILES
    from kubetune_trainer.modeling import load_tokenizer
    from kubetune_trainer.storage import FsStore

    tokenizer = load_tokenizer(str(ensure_smollm2()))
    job = spec()
    store = FsStore(store_dir, "pvc://cache/")
    base, started = rss_kib("VmRSS"), time.perf_counter()
    if mode == "cache":
        entry, folder = fetch_entry(store, "bench", scratch / "bench", give_up_after=60)
        data_set = cached_datasets(entry, folder, tokenizer)
        layout = BatchLayout(4, 8, 1)  # rank 0 of 8
        batches = micro_batches(len(data_set.train), layout, seed=42, rank=0, position=DataPosition())
        for _, indices in zip(range(100), batches, strict=False):
            [data_set.train[i] for i in indices]
    else:
        dataset = job.dataset.model_copy(update={"train": str(data)})  # a local file, read as the trainer reads
        data_set = build_datasets(dataset, job.training, tokenizer, max_positions=None, files=LOCAL_FILES,
                                  task="causal-lm")
        if mode == "preflight":
            publish_entry(store, "bench", data_set.train, data_set.eval, {
                "train_records": data_set.train_records, "eval_records": data_set.eval_records,
                "dropped": data_set.dropped, "first_dropped": data_set.first_dropped,
                "truncated": data_set.truncated, "labels": None}, give_up_after=60)
    seconds = time.perf_counter() - started
    return {"mode": mode, "seconds": seconds, "sequences": len(data_set.train),
            "rss_mib": (rss_kib("VmHWM") - base) / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--worker", nargs=4, metavar=("MODE", "DATA", "STORE", "SCRATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, data, store, scratch = args.worker
        print(json.dumps(worker(mode, Path(data), Path(store), Path(scratch))))
        return 0
    print("chat records, SmolLM2-135M-Instruct's tokenizer, maxSeqLength 512; one fresh process a row")
    print(f"{'records':>8} {'mode':<10} {'seconds':>8} {'sequences':>10} {'peak RSS growth':>16}")
    for count in args.records:
        with tempfile.TemporaryDirectory(prefix="bench-data-cache-") as tmp:
            folder = Path(tmp)
            data = folder / "train.jsonl"
            write_records(data, count)
            (folder / "store").mkdir()
            results = {}
            for mode in MODES:
                out = subprocess.run([sys.executable, __file__, "--worker", mode, str(data), str(folder / "store"),
                                      str(folder / f"scratch-{mode}")], capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                results[mode] = row
                print(f"{count:>8} {mode:<10} {row['seconds']:>8.2f} {row['sequences']:>10} "
                      f"{row['rss_mib']:>12.0f} MiB", flush=True)
            speedup = results["tokenize"]["seconds"] / max(results["cache"]["seconds"], 1e-9)
            print(f"{count:>8} a rank's data ready {speedup:.0f}x sooner from the cache")
    return 0


if __name__ == "__main__":
    sys.exit(main())
