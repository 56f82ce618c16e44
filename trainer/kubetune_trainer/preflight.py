"""`python -m kubetune_trainer.preflight [CONFIG]`: check a job on CPU before any GPU is requested.

The operator runs this in one pod without GPUs before it creates the workers
(spec.preflight). In order, cheapest first, each failing with the problem named:

1. storage: every bucket or claim is reachable, and a probe object can be written
   and deleted under the checkpoint, output and cache prefixes;
2. model: its config and tokenizer (not its weights) are staged and load, the
   task's head exists for it, maxSeqLength fits it, chat data has a chat template;
3. memory: the estimate per GPU (memory.py) fits spec.resources.gpuMemory, or the
   nodeSelector's nvidia.com/gpu.memory, when either is given;
4. data: unless the tokenized-data cache already holds this data set, every
   record is read and tokenized with the trainer's own code; any bad record fails
   the preflight with the first one's file:line and the count of all bad ones;
   else the samples are written to the cache (data/cache.py) under a key that
   hashes everything that determines them.

The result (PreflightStatus, as JSON) is the container's termination message, which the
operator copies into status.preflight; a failure is the one-line message, as the
trainer's. Exit codes are the trainer's (2 bad input, 1 storage unreachable).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune_api import FineTuneJob, FineTuneJobSpec, PreflightStatus
from kubetune_api.constants import GPU_MEMORY_LABEL
from kubetune_trainer.data import Datasets, build_datasets, check_seq_length
from kubetune_trainer.data.cache import CACHE_FORMAT, CacheEntry, find_entry, publish_entry
from kubetune_trainer.data.formats import check_tokenizer
from kubetune_trainer.data.sampler import BatchLayout, steps_per_epoch
from kubetune_trainer.errors import ConfigError, DataError, StorageError
from kubetune_trainer.logs import log_event
from kubetune_trainer.memory import gib
from kubetune_trainer.settings import Settings
from kubetune_trainer.staging import (
    WEIGHT_SUFFIXES,
    UriFiles,
    check_storage,
    check_writable,
    stage_model,
)
from kubetune_trainer.storage import file_sha256, open_store

# Files of a model folder that do not change how records tokenize: left out of the cache key, so
# that models sharing a tokenizer share tokenized data.
_NOT_TOKENIZER = ("config.json", "generation_config.json", "README.md", ".kubetune-complete")
# Bad records named in a failure, beside the first: enough to see a pattern.
_SHOWN_PROBLEMS = 3


def probe_write(uri: str, settings: Settings, spec: FineTuneJobSpec, what: str) -> None:
    """Write and delete a small object under `uri`: the credentials may write there."""
    check_writable(uri, settings)
    store = open_store(uri, spec.storage, settings)
    key = f".kubetune-preflight-{uuid.uuid4().hex[:12]}"
    try:
        try:
            store.put_bytes(key, b"kubetune preflight probe\n")
            store.delete([key])
        except StorageError as e:
            raise StorageError(f"{what} {uri}: the job's credentials cannot write and delete objects there "
                               f"({e}); give them write access to this prefix") from None
    finally:
        store.close()


def tokenizer_digest(model_dir: str) -> dict[str, str]:
    """SHA-256 of each file of the model folder that shapes tokenization (everything but the weights
    and the model's config)."""
    folder = Path(model_dir)
    digests = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and path.name not in _NOT_TOKENIZER:
            digests[path.name] = file_sha256(path)
    return digests


def cache_key(spec: FineTuneJobSpec, files: UriFiles, model_dir: str) -> str:
    """The name of this job's tokenized data set in the cache: a hash of everything that determines
    its samples and their order in the files (the content of every input file, not its name alone)."""
    dataset, training = spec.dataset, spec.training
    inputs = {
        "format": CACHE_FORMAT,
        "task": spec.task,
        "dataset": {"format": dataset.format, "fields": dataset.record_keys(), "labels": dataset.labels,
                    # A split is drawn by the seed; without one the seed plays no part.
                    "evalSplit": dataset.eval_split, "seed": training.seed if dataset.eval_split else None},
        "maxSeqLength": training.max_seq_length,
        "packing": training.packing,
        "train": [files.fingerprint(f) for f in files.files(dataset.train)],
        "eval": [files.fingerprint(f) for f in files.files(dataset.eval)] if dataset.eval else None,
        "tokenizer": tokenizer_digest(model_dir),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def gpu_memory(spec: FineTuneJobSpec) -> int | None:
    """Bytes of memory per GPU, from spec.resources.gpuMemory or the nodeSelector's label (MiB)."""
    from kubetune_trainer.memory import parse_memory_quantity

    res = spec.resources
    if res.gpu_memory is not None:
        try:
            return parse_memory_quantity(str(res.gpu_memory))
        except ValueError as e:
            raise ConfigError(f"spec.resources.gpuMemory: {e}") from None
    label = (res.node_selector or {}).get(GPU_MEMORY_LABEL)
    if label is not None:
        try:
            return int(label) * 1024 * 1024
        except ValueError:
            raise ConfigError(f"spec.resources.nodeSelector {GPU_MEMORY_LABEL}={label!r}: expected the GPU's memory "
                              "in MiB, as GPU feature discovery sets it") from None
    return None


def check_memory(spec: FineTuneJobSpec, model_dir: str, labels: list[str] | None) -> dict[str, Any]:
    """The memory estimate per GPU, and a ConfigError with the numbers when it does not fit."""
    from kubetune_trainer.memory import estimate_memory, model_shape

    estimate = estimate_memory(model_shape(model_dir, spec, labels), spec)
    limit = gpu_memory(spec)
    log_event("preflight_memory", estimate=estimate.to_status(), gpu_memory=limit)
    if limit is not None and estimate.total > limit:
        raise ConfigError(
            f"the model does not fit the GPUs: it needs about {estimate.describe()}, but each GPU has "
            f"{gib(limit)} (spec.resources.gpuMemory or the {GPU_MEMORY_LABEL} node label); lower "
            "spec.training.microBatchSize or maxSeqLength, set spec.method.gradientCheckpointing, use "
            "spec.method.type lora, a higher spec.deepspeed.zeroStage or offload cpu, or more GPUs")
    return {"memory_per_gpu": estimate.describe(), "memory_per_gpu_bytes": estimate.total, "gpu_memory_bytes": limit}


def scan_data(spec: FineTuneJobSpec, preprocessor: Any, files: UriFiles, max_positions: int | None) -> Datasets:
    """Read and tokenize every record; fail with the first bad one's location and the count of all."""
    problems: list[str] = []
    data = build_datasets(spec.dataset, spec.training, preprocessor, task=spec.task, files=files,
                          max_positions=max_positions, problems=problems)
    if problems:
        more = "; then: " + " | ".join(problems[1:1 + _SHOWN_PROBLEMS]) if len(problems) > 1 else ""
        raise DataError(f"{problems[0]} ({len(problems)} bad record(s) in all; fix or remove them{more})")
    if not data.train:
        raise DataError(f"{spec.dataset.train}: no record has a learnable token within "
                        f"spec.training.maxSeqLength={spec.training.max_seq_length}")
    return data


def _facts(data: Datasets) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "train_records": data.train_records, "eval_records": data.eval_records, "dropped": data.dropped,
        "first_dropped": data.first_dropped, "truncated": data.truncated, "labels": data.labels,
        "tokens": sum(len(s.input_ids) for s in data.train) if hasattr(data.train[0], "input_ids") else None,
    }
    if data.labels is not None:
        counts = Counter(s.label for s in data.train)
        facts["label_counts"] = {data.labels[i]: counts[i] for i in range(len(data.labels))}
    return facts


def run_preflight(job: FineTuneJob, settings: Settings) -> PreflightStatus:
    """Every check, in order; the status to report (a failure raises the trainer's errors)."""
    from kubetune_trainer.loop import LoopPlan
    from kubetune_trainer.modeling import check_task_head, load_preprocessor, max_positions

    started = time.monotonic()
    spec = job.spec
    # 1. Storage.
    check_storage([spec.model.uri, spec.dataset.train, spec.dataset.eval, spec.checkpoint_uri, spec.output.uri,
                   spec.cache_uri], settings, spec.storage)
    probe_write(spec.checkpoint_uri, settings, spec, "spec.checkpoint.uri")
    probe_write(spec.output.uri, settings, spec, "spec.output.uri")
    text = spec.task != "image-classification"
    if text:
        probe_write(spec.cache_uri, settings, spec, "the tokenized-data cache (spec.preflight.cacheUri)")
    log_event("preflight_storage", ok=True)
    # 2. Model: config and tokenizer, not the weights.
    model_dir = stage_model(spec.model.uri, settings, spec.storage, weights=False)
    check_task_head(model_dir, spec)
    preprocessor = load_preprocessor(model_dir, spec)
    positions = max_positions(model_dir, spec.model.trust_remote_code) if text else None
    if spec.task == "causal-lm":
        check_tokenizer(preprocessor, spec.dataset.format)
    check_seq_length(spec.training, positions)
    log_event("preflight_model", path=model_dir, task=spec.task)
    # 3. Memory (the head's size needs the labels only roughly: declared ones, or two).
    memory = check_memory(spec, model_dir, list(spec.dataset.labels or ["0", "1"]))
    # 4. Data: from the cache, or read, tokenized and stored there.
    files = UriFiles(settings, spec.storage)
    facts: dict[str, Any]
    cache: dict[str, Any] = {}
    if text:
        key = cache_key(spec, files, model_dir)
        store = open_store(spec.cache_uri, spec.storage, settings)
        try:
            give_up = min(settings.upload_give_up_seconds, 600)
            entry: CacheEntry | None = find_entry(store, key, give_up_after=give_up)
            cached = entry is not None
            if entry is None:
                data = scan_data(spec, preprocessor, files, positions)
                entry = publish_entry(store, key, data.train, data.eval, _facts(data), give_up_after=give_up)
        finally:
            store.close()
        facts, train_sequences = entry.facts, entry.samples("train")
        cache = {"cache_uri": f"{spec.cache_uri}{key}/", "cached": cached}
        log_event("preflight_data", cached=cached, uri=cache["cache_uri"], records=facts["train_records"],
                  sequences=train_sequences)
    else:
        data = scan_data(spec, preprocessor, files, positions)
        facts, train_sequences = _facts(data), len(data.train)
        log_event("preflight_data", cached=False, records=facts["train_records"], sequences=train_sequences)
    per_epoch = steps_per_epoch(train_sequences, BatchLayout.for_spec(spec))
    total = LoopPlan.for_spec(spec, per_epoch, "").total_steps
    labels = facts.get("label_counts")
    status = PreflightStatus(
        result="Succeeded",
        records=facts["train_records"], eval_records=facts["eval_records"], sequences=train_sequences,
        tokens=facts.get("tokens"), truncated=facts.get("truncated") if spec.task == "causal-lm" else None,
        dropped=facts.get("dropped"),
        labels=dict(list(labels.items())[:64]) if labels else None,
        steps_per_epoch=per_epoch, total_steps=total, **memory, **cache,
        seconds=round(time.monotonic() - started, 1),
    )
    return status.model_copy(update={"message": summary(status)})


def summary(status: PreflightStatus) -> str:
    """One line for status.preflight.message and the log."""
    parts = [f"{status.records} records", f"{status.sequences} sequences"]
    if status.tokens is not None:
        parts.append(f"{status.tokens} tokens")
    if status.truncated:
        parts.append(f"{status.truncated} truncated")
    if status.dropped:
        parts.append(f"{status.dropped} dropped")
    parts.append(f"{status.steps_per_epoch} steps/epoch, {status.total_steps} in all")
    if status.memory_per_gpu:
        parts.append(f"memory {status.memory_per_gpu.split(':')[0]}"
                     + (f" of {gib(status.gpu_memory_bytes)}" if status.gpu_memory_bytes else ""))
    if status.cache_uri:
        parts.append("tokenized data reused from the cache" if status.cached else "tokenized data cached")
    return "preflight passed: " + ", ".join(parts)


def _body(path: str, settings: Settings, terminate: Callable[[str], None]) -> None:
    from kubetune_trainer.jobfile import load_job

    job = load_job(path, settings)
    status = run_preflight(job, settings)
    log_event("preflight", **status.to_manifest())
    terminate(termination_report(status))  # the operator copies it into status.preflight


# The kubelet keeps at most 4096 bytes of a termination message (and the trainer writes 4000).
REPORT_LIMIT = 3900


def termination_report(status: PreflightStatus) -> str:
    """The report as compact JSON that fits a termination message: without the per-label counts
    (the log line has them) when many long label names would not fit."""
    report = json.dumps(status.to_manifest(), separators=(",", ":"))
    if len(report) > REPORT_LIMIT:
        report = json.dumps(status.model_copy(update={"labels": None}).to_manifest(), separators=(",", ":"))
    return report


def main(argv: list[str] | None = None) -> int:
    from kubetune_trainer.__main__ import main as trainer_main

    return trainer_main(argv, body=_body)


if __name__ == "__main__":
    import os
    import sys

    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
