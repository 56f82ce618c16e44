"""Benchmark: the per-GPU memory estimate (kubetune_trainer.memory) against measured peaks.

For ZeRO stages 0 to 3, a real short DeepSpeed training run on the CPU (gloo), the
trainer's way: load_model, build_ds_config, create_engine, engine.train(), then a
few optimizer steps on random tokens; two processes (torchrun), and for ZeRO 0 also
one. Two more runs check gradient checkpointing and LoRA. The model is a Llama like
the test bed's tiny one (the SmolLM2 tokenizer, vocabulary 49,152) widened to 50M
random weights, written to a temporary folder in the training precision, so that the
model's state dominates what a step adds. bf16 by default (DeepSpeed trains bf16 on
the CPU); --precision fp32 runs the same in fp32.

Measured, per process: the peak resident memory (VmHWM) minus the resident memory
(VmRSS) just before the model is built: on the CPU, what a GPU would hold is host
memory of the training process. The larger of a run's ranks is its figure. To make
resident memory follow the live tensors:

- a warm-up first trains the test bed's tiny Llama one step with the same spec, so
  that one-time costs (importing the model's code and peft, the kernels' libraries)
  are in the baseline, not in the figure;
- glibc is told to map every block of 64 KiB or more on its own and to unmap it when
  freed (MALLOC_MMAP_THRESHOLD_); by default its threshold rises to 32 MiB and freed
  blocks below it stay resident in its heap.

The estimate is compared without its fixed GPU allowance (CUDA context, NCCL,
cuBLAS), which has no CPU counterpart. DeepSpeed allocates its reduce bucket (5e8
elements by default) whole with torch.empty: a GPU holds all of it, the CPU only the
pages written, never more than the gradients. The runs set
zero_optimization.reduce_bucket_size to a fifth of the model (spec.deepspeed.config,
which the estimate reads too), so that the bucket is written in full and the CPU
holds what a GPU would.

Columns: the estimate's parts and total (MiB per process), the measured peak, the
relative error, and two more measurements for reading the difference: after setup
(the engine created) and after the last step (the state kept between steps).

Exits 1 when any run's estimate is off the measured peak by more than --tolerance.

Usage:
    .venv/bin/python hack/bench_memory.py [--precision bf16|fp32] [--steps 3] [--seq 256] [--micro-batch 2]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 2**20
# The test bed's tiny Llama (testbed/kubetune_testbed/models.py), widened: 50.3M parameters.
MODEL: dict[str, Any] = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
                         "num_attention_heads": 8, "num_key_value_heads": 4,
                         "max_position_embeddings": 2048, "tie_word_embeddings": True}
REDUCE_BUCKET = 10_000_000  # elements: a fifth of the model (see above)


@dataclass(frozen=True)
class Run:
    """One measured configuration."""

    stage: int
    world: int
    method: str = "full"
    checkpointing: bool = False

    @property
    def name(self) -> str:
        return (f"ZeRO {self.stage} x{self.world}" + (" LoRA" if self.method == "lora" else "")
                + (" ckpt" if self.checkpointing else ""))


RUNS = [Run(0, 1), Run(0, 2), Run(1, 2), Run(2, 2), Run(3, 2), Run(2, 2, checkpointing=True),
        Run(2, 2, method="lora")]


def bench_spec(run: Run, args: argparse.Namespace) -> Any:
    """The FineTuneJob spec of a run (its locations are never read)."""
    from kubetune_api import parse_spec

    return parse_spec({
        "model": {"uri": "pvc://bench/model"}, "dataset": {"train": "pvc://bench/train.jsonl", "format": "text"},
        "training": {"maxSteps": args.steps, "learningRate": 1e-4, "microBatchSize": args.micro_batch,
                     "maxSeqLength": args.seq, "precision": args.precision},
        "method": {"type": run.method, "gradientCheckpointing": run.checkpointing},
        "deepspeed": {"zeroStage": run.stage,
                      "config": {"zero_optimization": {"reduce_bucket_size": REDUCE_BUCKET}}},
        "resources": {"gpusPerNode": run.world}, "output": {"uri": "pvc://bench/out"}})


def write_model(target: Path, precision: str) -> Path:
    """The bench model, random weights in the training precision, with the tiny model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kubetune_testbed.models import ensure_tiny

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny())
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **MODEL)
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config)
    model.to({"bf16": torch.bfloat16, "fp32": torch.float32}[precision]).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


# -- a training process (torchrun starts it with --worker)

def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _settle() -> None:
    """Free what Python and the C allocator hold but no longer use."""
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def warm_up(spec: Any) -> None:
    """Train the test bed's tiny Llama one step (no DeepSpeed) with the same spec."""
    import torch

    from kubetune_testbed.models import ensure_tiny
    from kubetune_trainer.modeling import load_model

    model = load_model(str(ensure_tiny()), spec)
    model.train()
    ids = torch.randint(0, 1000, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()


def worker(args: argparse.Namespace) -> None:
    """Train a few steps as the trainer does; write this rank's figures to <--out>.<rank>."""
    import torch

    from kubetune_trainer.distributed import destroy_distributed, init_distributed, process_world
    from kubetune_trainer.ds_config import build_ds_config
    from kubetune_trainer.engine import create_engine, lr_schedule
    from kubetune_trainer.logs import quiet_libraries
    from kubetune_trainer.modeling import load_model

    quiet_libraries()
    spec = bench_spec(Run(args.stage, args.world, args.method, args.checkpointing), args)
    env = process_world()
    init_distributed(env)
    try:
        warm_up(spec)
        _settle()
        before = _status("VmRSS")
        model = load_model(args.model, spec)
        config: Any = model.config  # transformers' config; nn.Module's __getattr__ types it as Tensor | Module
        vocab = int(config.vocab_size)
        engine = create_engine(model, build_ds_config(spec), lr_schedule(spec.training, args.steps), 0.0)
        setup = _status("VmRSS") - before
        engine.train()  # as the training loop does: gradient checkpointing acts only in training mode
        generator = torch.Generator().manual_seed(env.rank)
        for _ in range(args.steps):
            ids = torch.randint(0, vocab, (args.micro_batch, args.seq), generator=generator)
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
        figures = {"peak": _status("VmHWM") - before, "setup": setup, "after": _status("VmRSS") - before}
        Path(f"{args.out}.{env.rank}").write_text(json.dumps(figures))
    finally:
        destroy_distributed()


# -- the driver

def measure(run: Run, args: argparse.Namespace, model: Path, work: Path) -> dict[str, int]:
    """Run a configuration's training processes; each figure is the largest of its ranks'."""
    out = work / f"run-{run.stage}-{run.world}-{run.method}-{int(run.checkpointing)}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={run.world}",
               __file__, "--worker", f"--out={out}", f"--model={model}", f"--stage={run.stage}",
               f"--world={run.world}", f"--method={run.method}", f"--precision={args.precision}",
               f"--steps={args.steps}", f"--seq={args.seq}", f"--micro-batch={args.micro_batch}",
               *(["--checkpointing"] if run.checkpointing else [])]
    threads = max(1, (os.cpu_count() or 1) // run.world)  # each process its share of the cores
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    ranks = [json.loads(path.read_text()) for path in (Path(f"{out}.{rank}") for rank in range(run.world))
             if path.exists()]
    if done.returncode != 0 or len(ranks) != run.world:
        raise SystemExit(f"{run.name}: the training run failed (exit {done.returncode}):\n"
                         f"{(done.stdout + done.stderr)[-3000:]}")
    return {key: max(rank[key] for rank in ranks) for key in ("peak", "setup", "after")}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run")
    parser.add_argument("--seq", type=int, default=256, help="maxSeqLength: tokens per sequence")
    parser.add_argument("--micro-batch", type=int, default=2, help="microBatchSize")
    parser.add_argument("--tolerance", type=float, default=0.25, help="largest relative error that passes")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take")
    # A training process's own arguments.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--method", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        worker(args)
        return

    from kubetune_trainer.logs import quiet_libraries
    from kubetune_trainer.memory import GPU_OVERHEAD, estimate_memory, model_shape

    quiet_libraries()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renamings, seen via peft
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    failed = []
    try:
        model = write_model(work / "model", args.precision)
        params = model_shape(str(model), bench_spec(RUNS[0], args)).params
        print(f"{args.precision} on the CPU (gloo); a Llama of {params / 1e6:.1f}M parameters "
              f"({MODEL['num_hidden_layers']} blocks, hidden {MODEL['hidden_size']}); microBatchSize "
              f"{args.micro_batch}, maxSeqLength {args.seq}, {args.steps} steps; reduce_bucket_size "
              f"{REDUCE_BUCKET:.0e}. MiB per process; xN: N processes, ckpt: gradient checkpointing")
        print(f"{'run':<18}{'params':>7}{'grads':>7}{'optim':>7}{'activ':>7}{'reused':>7}{'estimate':>9}"
              f"{'measured':>9}{'error':>7}{'setup':>7}{'after':>7}", flush=True)
        for run in RUNS:
            spec = bench_spec(run, args)
            estimate = estimate_memory(model_shape(str(model), spec), spec)
            expected = estimate.total - estimate.overhead  # no CUDA context on the CPU
            figures = measure(run, args, model, work)
            error = expected / figures["peak"] - 1
            if abs(error) > args.tolerance:
                failed.append(run.name)
            parts = (estimate.parameters, estimate.gradients, estimate.optimizer, estimate.activations,
                     -estimate.reused)
            print(f"{run.name:<18}" + "".join(f"{part / MIB:>7.0f}" for part in parts)
                  + f"{expected / MIB:>9.0f}{figures['peak'] / MIB:>9.0f}{error:>+7.0%}"
                  + f"{figures['setup'] / MIB:>7.0f}{figures['after'] / MIB:>7.0f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"error = estimate / measured - 1; the estimate leaves out its fixed {GPU_OVERHEAD / MIB:.0f} MiB "
          "GPU allowance")
    if failed:
        print(f"off by more than {args.tolerance:.0%}: {', '.join(failed)}")
        raise SystemExit(1)
    print(f"every run within {args.tolerance:.0%}")


if __name__ == "__main__":
    main()
