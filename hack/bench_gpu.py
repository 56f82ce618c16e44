"""Benchmark on one NVIDIA GPU: the kubetune trainer against Hugging Face Trainer, same model, same batch.

A ~1.2B Llama-architecture model built from a config (random weights, no download; the
SmolLM2 tokenizer that the test bed ships, vocabulary 49,152), bf16, sequence length 2048
with packing, DeepSpeed ZeRO-2, AdamW, gradient checkpointing. In one run, one after the other:

  1. the kubetune trainer (`torchrun -m kubetune_trainer`, the process a worker pod runs),
     with a checkpoint half-way (to local storage, a pvc:// claim);
  2. `transformers.Trainer` with the same DeepSpeed ZeRO-2 settings, the same packed
     sequences, micro batch and steps, saving a checkpoint at the same step.

Printed for each: median step time, tokens/s, MFU (model FLOPs per token 6N plus attention
12 L d s, over the GPU's dense bf16 peak, stated; recomputation not counted), peak GPU memory
(nvidia-smi, sampled every 0.2 s) and the checkpoint stall (the step that saved, minus the
median step).

`--tiny` runs the same on the CPU with the test bed's tiny Llama (fp32, gloo): a smoke test of
the script itself, not a benchmark. Run it where the `device` tool lends a GPU:
    .venv/bin/python hack/bench_gpu.py [--steps 40] [--micro-batch 4] [--seq 2048]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Dense bf16 tensor-core peaks (FLOP/s) by the name nvidia-smi reports.
PEAK_BF16 = {"H200": 989e12, "H100 80GB HBM3": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12,
             "H100 NVL": 835e12, "A100": 312e12, "L40S": 362e12}
LLAMA_1B: dict[str, Any] = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
            "num_key_value_heads": 4, "max_position_embeddings": 4096, "rope_theta": 10000.0}


def build_model(work: Path, tiny: bool) -> tuple[Path, int, dict[str, Any]]:
    """The model folder (random weights, the tokenizer), its parameter count and config."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kubetune_testbed.models import ensure_tiny

    source = Path(ensure_tiny())
    target = work / "model"
    if tiny:
        shutil.copytree(source, target)
        config = LlamaConfig.from_pretrained(target)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = LlamaConfig(vocab_size=len(tokenizer), **LLAMA_1B,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(0)
        LlamaForCausalLM(config).bfloat16().save_pretrained(target)
        tokenizer.save_pretrained(target)
    params = sum(p.numel() for p in LlamaForCausalLM(config).parameters()) if tiny else _count(config)
    return target, params, config.to_dict()


def _count(config: Any) -> int:
    h, i, layers, v = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
    return int(layers * per_layer + 2 * v * h + h)


def write_data(work: Path, tokens_needed: int) -> Path:
    """Plain text records of random words, enough for the run after packing."""
    rng = random.Random(0)
    words = [w for w in (Path("/usr/share/dict/words").read_text().split() if Path("/usr/share/dict/words").exists()
                         else []) if w.isalpha()] or [f"word{i}" for i in range(5000)]
    path = work / "data" / "train.jsonl"
    path.parent.mkdir(parents=True)
    with path.open("w") as out:
        written = 0
        while written < tokens_needed * 2:  # words are more than one token each: a margin
            text = " ".join(rng.choice(words) for _ in range(400))
            out.write(json.dumps({"text": text}) + "\n")
            written += 400
    return path


def _tree_rss_gib(root: int) -> float:
    """Resident memory of a process and all its descendants."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in stat.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields.get("PPid", "0").strip())
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(rss.get(pid, 0) for pid in tree) / 2**20


def run_measured(cmd: list[str], env: dict[str, str], gpu: bool) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `cmd`; with it, the peak GPU memory in use (nvidia-smi every 0.2 s), or on the CPU the peak
    resident memory of its process tree."""
    peak = 0.0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        while proc.poll() is None:
            if gpu:
                used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True).stdout.split()
                peak = max(peak, float(used[0]) / 1024 if used else 0.0)
            else:
                peak = max(peak, _tree_rss_gib(proc.pid))
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read()), peak


def step_times(events: list[dict[str, Any]]) -> dict[int, float]:
    """Step -> seconds since the previous step's event."""
    steps = sorted((e["step"], e["time"]) for e in events if e.get("event") == "step")
    return {s: t - prev for (_, prev), (s, t) in itertools.pairwise(steps)}


def run_kubetune(args: argparse.Namespace, work: Path, model: Path, data: Path) -> tuple[dict[int, float], float]:
    claims = work / "claims"
    claims.mkdir()
    (claims / "models").symlink_to(model)
    (claims / "data").symlink_to(data.parent)
    (claims / "work").symlink_to(work)
    config = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bench-gpu"}, "spec": {
        "model": {"uri": "pvc://models"},
        "dataset": {"train": f"pvc://data/{data.name}", "format": "text"},
        "method": {"type": "full", "gradientCheckpointing": not args.tiny},
        "training": {"maxSteps": args.steps, "learningRate": 1e-5, "lrScheduler": "constant", "warmupSteps": 0,
                     "microBatchSize": args.micro_batch, "globalBatchSize": args.micro_batch,
                     "maxSeqLength": args.seq, "packing": True, "precision": "fp32" if args.tiny else "bf16",
                     "logEverySteps": 1},
        "deepspeed": {"zeroStage": 2},
        "resources": {"gpusPerNode": 0 if args.tiny else 1},
        "checkpoint": {"everySteps": args.steps // 2},
        "output": {"uri": "pvc://work/kubetune-output"}}}
    path = work / "kubetune.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "KUBETUNE_PVC_ROOT": str(claims), "KUBETUNE_SCRATCH_DIR": str(work / "scratch"),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    out, peak = run_measured([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1",
                              "-m", "kubetune_trainer", str(path)], env, gpu=not args.tiny)
    if out.returncode:
        raise SystemExit(f"the kubetune trainer failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    from kubetune_trainer.logs import parse_log_lines

    return step_times(parse_log_lines(out.stdout)), peak


def hf_worker(args: argparse.Namespace) -> None:
    """Under torchrun: transformers.Trainer + DeepSpeed ZeRO-2 on the same packed sequences."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    work = Path(args.hf_worker)
    model_dir = work / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids: list[int] = []
    need = args.steps * args.micro_batch * args.seq
    for line in (work / "data" / "train.jsonl").open():
        ids += tokenizer(json.loads(line)["text"])["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= need:
            break
    blocks = [torch.tensor(ids[i:i + args.seq]) for i in range(0, need, args.seq)]
    dataset = [{"input_ids": b, "labels": b.clone()} for b in blocks]
    dtype = torch.float32 if args.tiny else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype)
    deepspeed = {"zero_optimization": {"stage": 2}, "bf16": {"enabled": not args.tiny},
                 "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                 "gradient_clipping": "auto"}

    class Times(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            print(json.dumps({"event": "step", "step": state.global_step, "time": time.time()}), flush=True)

    training = TrainingArguments(
        output_dir=str(work / "hf-output"), per_device_train_batch_size=args.micro_batch, max_steps=args.steps,
        learning_rate=1e-5, lr_scheduler_type="constant", bf16=not args.tiny, gradient_checkpointing=not args.tiny,
        logging_steps=args.steps, save_steps=args.steps // 2, save_strategy="steps", report_to=[],
        deepspeed=deepspeed, dataloader_num_workers=0, use_cpu=args.tiny)
    Trainer(model=model, args=training, train_dataset=dataset, callbacks=[Times()]).train()


def run_hf(args: argparse.Namespace, work: Path) -> tuple[dict[int, float], float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", __file__, "--hf-worker", str(work),
           f"--steps={args.steps}", f"--micro-batch={args.micro_batch}", f"--seq={args.seq}"]
    if args.tiny:
        cmd.append("--tiny")
    out, peak = run_measured(cmd, env, gpu=not args.tiny)
    if out.returncode:
        raise SystemExit(f"Hugging Face Trainer failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    from kubetune_trainer.logs import parse_log_lines

    return step_times(parse_log_lines(out.stdout)), peak


def gpu_name() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--tiny", action="store_true", help="the tiny Llama on the CPU: a smoke test of the script")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when its name is not known")
    parser.add_argument("--hf-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_worker:
        hf_worker(args)
        return 0
    if args.tiny:
        args.seq = min(args.seq, 128)
    name = "CPU" if args.tiny else gpu_name()
    if not args.tiny and not name:
        raise SystemExit("no NVIDIA GPU found (nvidia-smi); --tiny runs the script on the CPU")
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
        (v for k, v in PEAK_BF16.items() if k in name), 0.0)
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        model, params, config = build_model(work, args.tiny)
        data = write_data(work, args.steps * args.micro_batch * args.seq)
        results = {"kubetune (ZeRO-2)": run_kubetune(args, work, model, data),
                   "HF Trainer + DeepSpeed (ZeRO-2)": run_hf(args, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tokens = args.micro_batch * args.seq
    flops = 6 * params + 12 * config["num_hidden_layers"] * config["hidden_size"] * args.seq
    save_step = args.steps // 2
    print(f"\n{name}: {params / 1e6:,.1f}M parameters, micro batch {args.micro_batch} x {args.seq} tokens, "
          f"{args.steps} steps, a checkpoint at step {save_step}; peak bf16 "
          + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown (--peak-tflops)"))
    print(f"{'':34}" + "".join(f"{k:>34}" for k in results))

    def row(label: str, values: list[str]) -> None:
        print(f"{label:34}" + "".join(f"{v:>34}" for v in values))

    medians = {k: statistics.median(t for s, t in times.items() if s > 3 and s != save_step + 1 and s != save_step)
               for k, (times, _) in results.items()}
    row("median step (s)", [f"{m:.3f}" for m in medians.values()])
    row("tokens/s", [f"{tokens / m:,.0f}" for m in medians.values()])
    row("MFU", [f"{tokens / m * flops / peak:.1%}" if peak else "-" for m in medians.values()])
    row("peak memory (GiB)" + (" RSS" if args.tiny else ""), [f"{mem:.1f}" for _, mem in results.values()])
    row("checkpoint stall (s)", [
        f"{max(times.get(save_step, 0.0), times.get(save_step + 1, 0.0)) - medians[k]:.2f}"
        for k, (times, _) in results.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
