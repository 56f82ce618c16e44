"""Benchmark: what checkpoint streaming costs the training loop, and how fast it uploads.

One process, a real DeepSpeed engine (ZeRO-2, fp32, AdamW) of a real model
(SmolLM2-135M by default: about 2.2 GB of checkpoint per save), the local
cluster's MinIO. Printed, each from the same run:

1. Stall per checkpoint: how long the training loop is blocked when it saves
   with streaming on (save to local disk + hand-off to the uploader, while the
   previous checkpoint may still be uploading), against
   - a plain local save (DeepSpeed's save_checkpoint to local disk, nothing else
     running), and
   - a synchronous save + upload + commit (what the loop would wait without
     the background uploader).
2. Step time while a checkpoint uploads in the background, against without.
3. Upload throughput of one checkpoint's files (MB/s) with the trainer's
   uploader (SHA-256 of each file, largest first, each submitted once hashed;
   s3transfer with files and 64 MiB parts concurrent; then the part manifest)
   against plain boto3 `upload_file` of the same files, one after the other
   (boto3's defaults: 8 MiB parts, 10 threads per file).

S3 is the local cluster's MinIO when it is up (`make up`), the store that
AWS_ENDPOINT_URL and the AWS_* keys name, or else a MinIO the benchmark starts
itself from the cluster's cached binary (`make binaries`).

Usage:
    .venv/bin/python hack/bench_checkpoint.py [--model smollm2|tiny] [--saves 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubetune_testbed import attach
from kubetune_testbed.binaries import Binaries
from kubetune_testbed.models import ensure_smollm2, ensure_tiny
from kubetune_testbed.ports import free_port

MB = 2**20


def s3_environment(work: Path) -> subprocess.Popen[bytes] | None:
    """AWS_* for an S3 endpoint: the environment's, else the local cluster's MinIO, else a MinIO
    of our own (the cluster's cached binary, on a free port); returns the process we started."""
    if os.environ.get("AWS_ENDPOINT_URL"):
        return None
    cluster = attach()
    if cluster is not None:
        os.environ.update({k: v for k, v in cluster.env().items() if k.startswith("AWS_")})
        return None
    minio = Binaries.pinned().minio
    if not minio.exists():
        raise SystemExit("no S3 endpoint: run `make up` (or `make binaries`), or set AWS_ENDPOINT_URL and keys")
    port, user, password = free_port(), "bench", secrets.token_hex(12)
    proc = subprocess.Popen([str(minio), "server", "--quiet", f"--address=127.0.0.1:{port}",
                             str(work / "minio")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": password,
                                 "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if urllib.request.urlopen(url + "/minio/health/ready", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise SystemExit("the benchmark's own MinIO did not become ready")
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID=user, AWS_SECRET_ACCESS_KEY=password,
                      AWS_DEFAULT_REGION="us-east-1")
    print(f"S3: a MinIO of the benchmark's own at {url} (no local cluster up)", flush=True)
    return proc


def model_dir(name: str) -> Path:
    return Path(ensure_smollm2() if name == "smollm2" else ensure_tiny())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        import torch

        from kubetune_api import parse_spec
        from kubetune_trainer.distributed import init_distributed, process_world
        from kubetune_trainer.ds_config import build_ds_config
        from kubetune_trainer.engine import create_engine, lr_schedule
        from kubetune_trainer.modeling import load_model
        from kubetune_trainer.settings import Settings
        from kubetune_trainer.storage import s3_client

        self.args, self.work = args, work
        self.env = process_world()
        init_distributed(self.env)
        path = model_dir(args.model)
        # A full fine-tune under ZeRO-2 in one process; the locations are not read here.
        spec = parse_spec({
            "model": {"uri": "pvc://bench/model"}, "dataset": {"train": "pvc://bench/train.jsonl", "format": "text"},
            "training": {"maxSteps": 1000, "learningRate": 1e-5, "microBatchSize": 2, "precision": "fp32"},
            "method": {"gradientCheckpointing": False}, "deepspeed": {"zeroStage": 2},
            "resources": {"gpusPerNode": 0}, "output": {"uri": "pvc://bench/out"},
            "storage": {"addressingStyle": "path"}})
        model = load_model(str(path), spec)
        self.engine = create_engine(model, build_ds_config(spec), lr_schedule(spec.training, 1000), 0.0)
        config: Any = model.config  # transformers' config; nn.Module's __getattr__ types it as Tensor | Module
        self.vocab = int(config.vocab_size)
        self.generator = torch.Generator().manual_seed(0)
        self.settings = Settings(scratch_dir=work)
        self.client = s3_client(spec.storage)
        self.bucket = f"bench-{secrets.token_hex(4)}"
        self.client.create_bucket(Bucket=self.bucket)
        self.step = 0

    def train_step(self) -> float:
        import torch

        started = time.monotonic()
        ids = torch.randint(0, self.vocab, (2, self.args.seq_len), generator=self.generator)
        loss = self.engine(input_ids=ids, labels=ids).loss
        self.engine.backward(loss)
        self.engine.step()
        self.step += 1
        return time.monotonic() - started

    def save(self, directory: Path) -> tuple[float, Path]:
        from kubetune_trainer.checkpoint import TrainState, save_checkpoint

        started = time.monotonic()
        folder = save_checkpoint(self.engine, str(directory), TrainState(self.step), self.env, {"bench": True})
        return time.monotonic() - started, folder

    def store(self, prefix: str) -> Any:
        from kubetune_trainer.storage import S3Store

        return S3Store(f"s3://{self.bucket}/{prefix}/", self.client, self.settings)

    # -- 1 and 2: stall per checkpoint, step time during uploads
    def plain_local_saves(self) -> tuple[list[float], int]:
        times, size = [], 0
        for i in range(self.args.saves):
            self.train_step()
            seconds, folder = self.save(self.work / "plain")
            size = folder_bytes(folder)
            times.append(seconds)
            shutil.rmtree(folder)
            print(f"  plain local save {i + 1}: {seconds:.2f}s", flush=True)
        return times, size

    def synchronous_saves(self) -> list[float]:
        """Save, upload and commit before training continues (no background uploader)."""
        from kubetune_trainer.streaming import CheckpointCommitter, CheckpointUploader

        store = self.store("sync")
        committer = CheckpointCommitter(store, world_size=1, run_id="sync", keep_last=1, config={},
                                        give_up_after=300)
        committer.poll_seconds = 0.05
        uploader = CheckpointUploader(store, rank=0, world_size=1, run_id="sync", give_up_after=300)
        times = []
        try:
            for i in range(self.args.saves):
                self.train_step()
                started = time.monotonic()
                _, folder = self.save(self.work / "sync")
                committer.expect(self.step)
                uploader.on_checkpoint_saved(self.step, folder)
                uploader.drain()
                committer.wait_committed(self.step)
                times.append(time.monotonic() - started)
                print(f"  synchronous save+upload+commit {i + 1}: {times[-1]:.2f}s", flush=True)
        finally:
            uploader.close()
            committer.close()
        return times

    def streaming_saves(self) -> tuple[list[float], list[float], list[float]]:
        """The trainer's way: save, hand off, train on. Returns (stalls, step times while an upload
        runs, step times while none runs)."""
        from kubetune_trainer.streaming import CheckpointCommitter, CheckpointUploader

        store = self.store("stream")
        committer = CheckpointCommitter(store, world_size=1, run_id="stream", keep_last=1, config={},
                                        give_up_after=300)
        uploader = CheckpointUploader(store, rank=0, world_size=1, run_id="stream", give_up_after=300)
        stalls: list[float] = []
        busy: list[float] = []
        idle: list[float] = []
        try:
            for i in range(self.args.saves):
                for _ in range(self.args.steps_between):
                    uploading = uploader.busy  # when the step starts
                    seconds = self.train_step()
                    (busy if uploading else idle).append(seconds)
                started = time.monotonic()
                _, folder = self.save(self.work / "stream")
                committer.on_checkpoint_saved(self.step, folder)
                uploader.on_checkpoint_saved(self.step, folder)
                stalls.append(time.monotonic() - started)
                print(f"  streaming save {i + 1}: loop blocked {stalls[-1]:.2f}s", flush=True)
            uploader.drain()
            committer.wait_committed(self.step)
            for _ in range(self.args.steps_between):  # reference steps, nothing uploading
                idle.append(self.train_step())
        finally:
            uploader.close()
            committer.close()
        return stalls, busy, idle

    # -- 3: upload throughput, the trainer's uploader vs plain boto3
    def upload_throughput(self) -> tuple[list[float], list[float], int]:
        """MB/s of the trainer's uploader (hash, upload, part manifest) and of plain boto3."""
        from kubetune_trainer.streaming import CheckpointUploader

        _, folder = self.save(self.work / "files")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)
        ours, plain = [], []
        for i in range(self.args.repeat):
            # The uploader deletes what it uploaded: give it hard links to the same files.
            copy = self.work / f"links-{i}" / folder.name
            shutil.copytree(folder, copy, copy_function=os.link)
            uploader = CheckpointUploader(self.store(f"ours-{i}"), rank=0, world_size=1, run_id="bench",
                                          give_up_after=300)
            started = time.monotonic()
            uploader.on_checkpoint_saved(self.step, copy)
            uploader.drain()
            ours.append(size / MB / (time.monotonic() - started))
            uploader.close()
            started = time.monotonic()
            for p in files:
                self.client.upload_file(str(p), self.bucket, f"plain-{i}/{p.name}")
            plain.append(size / MB / (time.monotonic() - started))
            print(f"  upload {i + 1}: trainer uploader {ours[-1]:.0f} MB/s, plain boto3 {plain[-1]:.0f} MB/s",
                  flush=True)
        return ours, plain, size

    def cleanup(self) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
        self.client.delete_bucket(Bucket=self.bucket)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--saves", type=int, default=3, help="checkpoints per measurement")
    parser.add_argument("--steps-between", type=int, default=4, help="training steps between streamed saves")
    parser.add_argument("--repeat", type=int, default=3, help="upload throughput repetitions")
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    minio = s3_environment(work)
    from kubetune_trainer.distributed import destroy_distributed
    from kubetune_trainer.logs import quiet_libraries

    quiet_libraries()
    bench = Bench(args, work)
    try:
        for _ in range(2):  # optimizer state exists, caches are warm
            bench.train_step()
        print("plain local saves", flush=True)
        plain, size = bench.plain_local_saves()
        print("streaming saves", flush=True)
        stalls, busy, idle = bench.streaming_saves()
        print("synchronous saves", flush=True)
        sync = bench.synchronous_saves()
        print("upload throughput", flush=True)
        ours, boto, upload_size = bench.upload_throughput()
    finally:
        bench.cleanup()
        destroy_distributed()
        if minio is not None:
            minio.terminate()
            minio.wait()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"model {args.model}, ZeRO-2 fp32, one process; checkpoint {size / MB:.0f} MiB; "
          f"medians of {args.saves} saves / {args.repeat} uploads")
    print(f"{'loop blocked per checkpoint, streaming':<52}{median(stalls):>8.2f} s")
    print(f"{'plain local save (DeepSpeed to local disk)':<52}{median(plain):>8.2f} s")
    print(f"{'synchronous save + upload + commit':<52}{median(sync):>8.2f} s")
    print(f"{'step time, upload running in background':<52}{median(busy):>8.2f} s  ({len(busy)} steps)")
    print(f"{'step time, nothing uploading':<52}{median(idle):>8.2f} s  ({len(idle)} steps)")
    print(f"{'upload, trainer uploader (SHA-256, upload, part)':<52}{median(ours):>8.0f} MB/s")
    print(f"{'upload, plain boto3 upload_file, same files':<52}{median(boto):>8.0f} MB/s  "
          f"({upload_size / MB:.0f} MiB)")


if __name__ == "__main__":
    main()
