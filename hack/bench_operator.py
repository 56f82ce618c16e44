"""Benchmark: how fast the operator turns many FineTuneJobs into running workers.

Creates N jobs of M workers each at once on kwok GPU nodes and prints: time
until every job is Running, pods per second, Kubernetes API calls the
operator's reconciles made per job, and the operator's peak RSS.

Baseline, measured in the same run on the same cluster: the same number of
plain pods created directly (no operator) until kwok marks them all Running,
i.e. what the control plane itself allows.

Usage (the local cluster must be up: `make up`):
    .venv/bin/python hack/bench_operator.py [--jobs 200] [--nodes-per-job 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubetune_testbed import REPO, LocalCluster, attach, default_run_dir
from kubetune_testbed.nodes import FAKE_NODE_TOLERATION, fake_gpu_node

GPUS_PER_NODE = 8
# Pods of the benchmark go to kwok's fake nodes only, never to the node agent's, where they would really run.
KWOK_ONLY = {"tolerations": [FAKE_NODE_TOLERATION], "nodeSelector": {"type": "kwok"}}


class Bench:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.env = {**os.environ, "KUBECONFIG": str(cluster.admin_kubeconfig)}
        self.kubectl_bin = str(cluster.bins.kube("kubectl"))

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return subprocess.run([self.kubectl_bin, *args], env=self.env, input=input, capture_output=True,
                              text=True, check=True, timeout=300).stdout

    def apply_many(self, items: list[dict[str, Any]], namespace: str, parallel: int = 8) -> None:
        """Create objects in parallel batches (as a GitOps sync of many manifests would)."""
        chunks = [items[i::parallel] for i in range(parallel)]
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(lambda chunk: self.kubectl(
                "create", "-n", namespace, "-f", "-",
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": chunk})) if chunk else None, chunks))

    def count_running_pods(self, namespace: str) -> int:
        out = self.kubectl("get", "pods", "-n", namespace, "--field-selector=status.phase=Running", "-o", "name")
        return len(out.split())

    def count_running_jobs(self, namespace: str) -> int:
        out = json.loads(self.kubectl("get", "ftj", "-n", namespace, "-o", "json"))
        return sum(1 for j in out["items"] if (j.get("status") or {}).get("phase") == "Running")


def wait_until(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)
    return time.monotonic()


def ensure_nodes(bench: Bench, pods: int) -> None:
    needed = math.ceil(pods / GPUS_PER_NODE)
    nodes = [fake_gpu_node(f"bench-gpu-{i}", GPUS_PER_NODE) for i in range(needed)]
    for node in nodes:
        node["metadata"]["labels"]["kubetune.io/bench"] = "true"  # type: ignore[index]
    bench.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))

    def ready() -> bool:
        out = json.loads(bench.kubectl("get", "nodes", "-o", "json"))
        return sum(1 for n in out["items"] if n["metadata"]["name"].startswith("bench-gpu-") and
                   any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))) >= needed

    wait_until(ready, 120, f"{needed} bench nodes Ready")


def baseline(bench: Bench, pods: int) -> float:
    ns = f"bench-baseline-{int(time.time())}"
    bench.kubectl("create", "namespace", ns)
    wait_until(lambda: subprocess.run([bench.kubectl_bin, "get", "sa", "default", "-n", ns], env=bench.env,
                                      capture_output=True).returncode == 0, 30, "default ServiceAccount")
    items = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"plain-{i}"},
              "spec": {"containers": [{"name": "main", "image": "busybox",
                                       "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
                       **KWOK_ONLY}} for i in range(pods)]
    start = time.monotonic()
    bench.apply_many(items, ns)
    end = wait_until(lambda: bench.count_running_pods(ns) >= pods, 600, "baseline pods Running")
    bench.kubectl("delete", "namespace", ns, "--wait=false")
    return end - start


def job(i: int, nodes: int) -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": f"bench-{i:04d}"},
            "spec": {"model": {"uri": "s3://models/base/"},
                     "dataset": {"train": "s3://data/train.jsonl", "format": "text"},
                     "training": {"maxSteps": 1000, "microBatchSize": 1},
                     "resources": {"nodes": nodes, "gpusPerNode": 1, **KWOK_ONLY},
                     "image": "registry.example.com/kubetune/trainer:bench",
                     "output": {"uri": f"s3://out/bench-{i:04d}/"}}}


def metric_sum(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--nodes-per-job", type=int, default=2)
    parser.add_argument("--run-dir", type=Path, default=default_run_dir())
    args = parser.parse_args()
    cluster = attach(args.run_dir)
    if cluster is None:
        print(f"no local cluster is up in {args.run_dir}: run `make up` first", file=sys.stderr)
        return 1
    bench = Bench(cluster)
    pods = args.jobs * args.nodes_per_job
    for path in sorted((REPO / "crds").glob("*.yaml")):
        bench.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    ensure_nodes(bench, pods)

    print(f"baseline: {pods} plain pods created directly ...", flush=True)
    base = baseline(bench, pods)

    ns = f"bench-operator-{int(time.time())}"
    bench.kubectl("create", "namespace", ns)
    metrics_port = 18080
    log = Path(tempfile.mkdtemp()) / "operator.log"
    env = {**bench.env, "KUBETUNE_METRICS_PORT": str(metrics_port),
           "KUBETUNE_HEALTH_PORT": "0", "KUBETUNE_LOG_LEVEL": "WARNING"}
    with open(log, "wb") as out:
        op = subprocess.Popen([sys.executable, "-m", "kubetune_operator", "--standalone"], env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    try:
        time.sleep(3)  # let the operator list and watch before the burst
        print(f"operator: {args.jobs} FineTuneJobs x {args.nodes_per_job} workers ...", flush=True)
        start = time.monotonic()
        bench.apply_many([job(i, args.nodes_per_job) for i in range(args.jobs)], ns)
        end = wait_until(lambda: bench.count_running_jobs(ns) >= args.jobs, 900, "every job Running")
        elapsed = end - start
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        rss_kib = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{op.pid}/status").read_text()).group(1))  # type: ignore[union-attr]
    finally:
        op.terminate()
        try:
            op.wait(timeout=30)
        except subprocess.TimeoutExpired:
            op.kill()
            op.wait()
        bench.kubectl("delete", "namespace", ns, "--wait=false")
        bench.kubectl("delete", "nodes", "-l", "kubetune.io/bench=true", "--wait=false")

    requests = metric_sum(text, "kubetune_api_requests_total")
    reconciles = metric_sum(text, "kubetune_reconcile_duration_seconds_count")
    print()
    print(f"{'':32}{'operator':>12}{'baseline':>12}")
    print(f"{'jobs x workers':32}{f'{args.jobs}x{args.nodes_per_job}':>12}{'-':>12}")
    print(f"{'pods Running':32}{pods:>12}{pods:>12}")
    print(f"{'time until all Running (s)':32}{elapsed:>12.1f}{base:>12.1f}")
    print(f"{'pods/s':32}{pods / elapsed:>12.1f}{pods / base:>12.1f}")
    print(f"{'API calls per job (reconciles)':32}{requests / args.jobs:>12.1f}{'-':>12}")
    print(f"{'reconciles per job':32}{reconciles / args.jobs:>12.1f}{'-':>12}")
    print(f"{'operator peak RSS (MiB)':32}{rss_kib / 1024:>12.0f}{'-':>12}")
    by_op = {m.group(1): float(m.group(2)) for m in
             re.finditer(r'^kubetune_api_requests_total{operation="([a-z_]+)"} ([0-9.e+]+)$', text, re.M)}
    print("API calls per job by operation: " + ", ".join(
        f"{op} {n / args.jobs:.1f}" for op, n in sorted(by_op.items(), key=lambda kv: -kv[1])))
    print(f"\n(API calls count the operator's own reads and writes; kopf's watch streams and its\n"
          f" annotation patches are not included.) operator log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
