"""Benchmark: how fast the operator turns many FineTuneJobs into running workers.

Creates N jobs of M workers each at once on kwok GPU nodes and prints: time
until every worker pod is Running (and every job), pods per second, the API
requests per job counted at the API server, the operator's own count of its
calls, and the operator's peak RSS.

Baseline, measured in the same run on the same cluster: the same number of
plain pods created directly (no operator) until kwok marks them all Running,
i.e. what the control plane itself allows.

With `--peer kubeflow`, the Kubeflow training operator (built from its Go module
by `hack/build-binaries.sh training-operator`) runs the same way in the same run,
after kubetune and a cleanup: N PyTorchJobs of one Master and M-1 Workers, one
nvidia.com/gpu each, on the same kwok nodes; kubetune runs twice, at its
defaults (50 QPS / 100 burst) and at the peer's (controller-runtime's 20 / 30).

Each operator talks to the API server as its own ServiceAccount, which a
FlowSchema of its own (priority level `exempt`: never queued) matches, so the
API server's `apiserver_flowcontrol_dispatched_requests_total{flow_schema}`
counts every request it made: reads, writes, watches, kopf's annotation patches.

Usage (the local cluster must be up: `make up`):
    .venv/bin/python hack/bench_operator.py [--jobs 200] [--nodes-per-job 2] [--peer kubeflow]
"""

from __future__ import annotations

import argparse
import base64
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
                     # Worker start-up is measured; kwok cannot run a preflight's checks.
                     "preflight": {"enabled": False},
                     "output": {"uri": f"s3://out/bench-{i:04d}/"}}}


def metric_sum(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


def histogram_quantile(text: str, name: str, q: float) -> float:
    """The q-quantile of a Prometheus histogram, interpolated within its bucket (as PromQL's
    histogram_quantile does)."""
    buckets = sorted((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2)))
                     for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} ([0-9.e+]+)$', text, re.M))
    total = buckets[-1][1] if buckets else 0.0
    if total == 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


IDENTITY_NAMESPACE = "kubetune-bench-identities"


def api_identity(bench: Bench, name: str, directory: Path) -> Path:
    """A ServiceAccount bound to cluster-admin, matched by a FlowSchema `name` of its own; its kubeconfig."""
    bench.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": IDENTITY_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": IDENTITY_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": IDENTITY_NAMESPACE}]},
        {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": {"name": name},
         "spec": {"matchingPrecedence": 100, "priorityLevelConfiguration": {"name": "exempt"},
                  "rules": [{"subjects": [{"kind": "ServiceAccount",
                                           "serviceAccount": {"name": name, "namespace": IDENTITY_NAMESPACE}}],
                             "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                                "clusterScope": True, "namespaces": ["*"]}],
                             "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}},
    ]}))
    token = bench.kubectl("create", "token", name, "-n", IDENTITY_NAMESPACE, "--duration=4h").strip()
    path = directory / f"{name}.kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "local", "cluster": {"server": bench.cluster.api_url,
                                                   "certificate-authority": str(bench.cluster.pki / "ca.crt")}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "bench", "context": {"cluster": "local", "user": name}}]}))
    path.chmod(0o600)
    return path


def dispatched(bench: Bench, flow_schema: str) -> float:
    """Requests the API server dispatched for a FlowSchema so far."""
    text = bench.kubectl("get", "--raw", "/metrics")
    return sum(float(m.group(1)) for m in re.finditer(
        rf'^apiserver_flowcontrol_dispatched_requests_total{{[^}}]*flow_schema="{flow_schema}"[^}}]*}} ([0-9.e+]+)$',
        text, re.M))


def peak_rss_mib(pid: int) -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024  # type: ignore[union-attr]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def new_namespace(bench: Bench, prefix: str) -> str:
    ns = f"{prefix}-{int(time.time())}"
    bench.kubectl("create", "namespace", ns)
    wait_until(lambda: subprocess.run([bench.kubectl_bin, "get", "sa", "default", "-n", ns], env=bench.env,
                                      capture_output=True).returncode == 0, 30, "default ServiceAccount")
    return ns


def cleanup(bench: Bench, ns: str) -> None:
    """Delete the namespace and wait until its pods are gone, so the next run starts from empty nodes."""
    bench.kubectl("delete", "namespace", ns, "--wait=false")
    wait_until(lambda: not bench.kubectl("get", "pods", "-n", ns, "-o", "name").strip(), 600, f"{ns} emptied")


def run_kubetune(bench: Bench, jobs: int, nodes: int, qps: int, burst: int, directory: Path) -> dict[str, Any]:
    kubeconfig = api_identity(bench, "bench-kubetune", directory)
    ns = new_namespace(bench, "bench-kubetune")
    metrics_port = 18080
    log = directory / f"kubetune-{qps}.log"
    env = {**bench.env, "KUBECONFIG": str(kubeconfig), "KUBETUNE_METRICS_PORT": str(metrics_port),
           "KUBETUNE_HEALTH_PORT": "0", "KUBETUNE_LOG_LEVEL": "WARNING",
           "KUBETUNE_API_QPS": str(qps), "KUBETUNE_API_BURST": str(burst)}
    before = dispatched(bench, "bench-kubetune")
    with open(log, "wb") as out:
        op = subprocess.Popen([sys.executable, "-m", "kubetune_operator", "--standalone"], env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    try:
        time.sleep(3)  # let the operator list and watch before the burst
        print(f"kubetune ({qps} QPS / {burst} burst): {jobs} FineTuneJobs x {nodes} workers ...", flush=True)
        start = time.monotonic()
        bench.apply_many([job(i, nodes) for i in range(jobs)], ns)
        pods_at = wait_until(lambda: bench.count_running_pods(ns) >= jobs * nodes, 900, "every worker Running")
        jobs_at = wait_until(lambda: bench.count_running_jobs(ns) >= jobs, 900, "every job Running")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        rss = peak_rss_mib(op.pid)
        requests = dispatched(bench, "bench-kubetune") - before
    finally:
        stop(op)
        cleanup(bench, ns)
    by_op = {m.group(1): float(m.group(2)) for m in
             re.finditer(r'^kubetune_api_requests_total{operation="([a-z_]+)"} ([0-9.e+]+)$', text, re.M)}
    return {"name": f"kubetune {qps}/{burst}", "pods_running": pods_at - start, "jobs_running": jobs_at - start,
            "requests": requests / jobs, "own_calls": metric_sum(text, "kubetune_api_requests_total") / jobs,
            "reconciles": metric_sum(text, "kubetune_reconcile_duration_seconds_count") / jobs, "rss": rss,
            "p50": histogram_quantile(text, "kubetune_reconcile_duration_seconds", 0.5),
            "p99": histogram_quantile(text, "kubetune_reconcile_duration_seconds", 0.99),
            "by_op": {k: v / jobs for k, v in by_op.items()}, "log": log}


def pytorchjob(i: int, nodes: int) -> dict[str, Any]:
    def replicas(count: int) -> dict[str, Any]:
        return {"replicas": count, "restartPolicy": "OnFailure", "template": {"spec": {
            "containers": [{"name": "pytorch", "image": "registry.example.com/kubetune/trainer:bench",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}}}], **KWOK_ONLY}}}

    specs = {"Master": replicas(1)}
    if nodes > 1:
        specs["Worker"] = replicas(nodes - 1)
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": f"bench-{i:04d}"},
            "spec": {"pytorchReplicaSpecs": specs}}


def run_kubeflow(bench: Bench, jobs: int, nodes: int, directory: Path) -> dict[str, Any]:
    """The Kubeflow training operator v1 as its own deployment runs it (only the PyTorchJob scheme; its
    cert rotator, which it waits for, fills a Secret and a ValidatingWebhookConfiguration)."""
    root = bench.cluster.bins.root / f"training-operator-{bench.cluster.bins.v['TRAINING_OPERATOR_VERSION']}"
    if not (root / "bin" / "training-operator").exists():
        subprocess.run([str(REPO / "hack" / "build-binaries.sh"), "training-operator"], check=True)
    bench.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(root / "crd" / "kubeflow.org_pytorchjobs.yaml"))
    wait_until(lambda: "True" in subprocess.run(
        [bench.kubectl_bin, "get", "crd", "pytorchjobs.kubeflow.org", "-o",
         'jsonpath={.status.conditions[?(@.type=="Established")].status}'],
        env=bench.env, capture_output=True, text=True).stdout, 60, "the PyTorchJob CRD Established")
    kubeconfig = api_identity(bench, "bench-kubeflow", directory)
    home = "kubetune-bench-kubeflow"
    bench.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": home}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "training-operator-webhook-cert", "namespace": home}},
        # The rotator is ready once its CA is in every webhook of this configuration. Its one webhook
        # matches only TFJobs, which the benchmark never creates: PyTorchJobs are not sent to a
        # webhook (kubetune's FineTuneJobs have none either; their CRD validates them).
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": "validator.training-operator.kubeflow.org"}, "webhooks": [{
             "name": "validator.tfjob.training-operator.kubeflow.org", "admissionReviewVersions": ["v1"],
             "sideEffects": "None", "failurePolicy": "Ignore",
             "clientConfig": {"service": {"name": "training-operator", "namespace": home,
                                          "path": "/validate-kubeflow-org-v1-tfjob"}},
             "rules": [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"], "operations": ["CREATE"],
                        "resources": ["tfjobs"]}]}]},
    ]}))
    ns = new_namespace(bench, "bench-kubeflow")
    health = 18081
    log = directory / "kubeflow.log"
    env = {**bench.env, "KUBECONFIG": str(kubeconfig), "MY_POD_NAMESPACE": home}
    before = dispatched(bench, "bench-kubeflow")
    with open(log, "wb") as out:
        op = subprocess.Popen([str(root / "bin" / "training-operator"), "--enable-scheme=pytorchjob",
                               "--metrics-bind-address=0", f"--health-probe-bind-address=127.0.0.1:{health}",
                               "--webhook-server-port=18443"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        certs = Path("/tmp/k8s-webhook-server/serving-certs")  # the operator's fixed cert directory

        def ready() -> bool:
            if op.poll() is not None:
                raise SystemExit(f"the training operator exited with {op.returncode}; see {log}")
            # What a kubelet does for its pod: the Secret the rotator filled, mounted at the cert directory.
            data = json.loads(bench.kubectl("get", "secret", "training-operator-webhook-cert", "-n", home,
                                            "-o", "json")).get("data") or {}
            if {"tls.crt", "tls.key", "ca.crt"} <= data.keys():
                certs.mkdir(parents=True, exist_ok=True)
                for key in ("tls.crt", "tls.key", "ca.crt"):
                    if not (certs / key).exists() or (certs / key).read_bytes() != base64.b64decode(data[key]):
                        (certs / key).write_bytes(base64.b64decode(data[key]))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(ready, 120, "the training operator ready")
        time.sleep(3)
        print(f"kubeflow training operator: {jobs} PyTorchJobs x {nodes} replicas ...", flush=True)
        start = time.monotonic()
        bench.apply_many([pytorchjob(i, nodes) for i in range(jobs)], ns)
        pods_at = wait_until(lambda: bench.count_running_pods(ns) >= jobs * nodes, 900, "every replica Running")

        def jobs_running() -> bool:
            out = json.loads(bench.kubectl("get", "pytorchjobs.kubeflow.org", "-n", ns, "-o", "json"))
            return sum(any(c["type"] == "Running" and c["status"] == "True"
                           for c in (j.get("status") or {}).get("conditions") or ()) for j in out["items"]) >= jobs

        jobs_at = wait_until(jobs_running, 900, "every PyTorchJob Running")
        rss = peak_rss_mib(op.pid)
        requests = dispatched(bench, "bench-kubeflow") - before
    finally:
        stop(op)
        cleanup(bench, ns)
    return {"name": "kubeflow 20/30", "pods_running": pods_at - start, "jobs_running": jobs_at - start,
            "requests": requests / jobs, "rss": rss, "log": log}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--nodes-per-job", type=int, default=2)
    parser.add_argument("--peer", choices=["kubeflow"], help="also run this operator on the same jobs")
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
    directory = Path(tempfile.mkdtemp(prefix="bench-operator-"))

    print(f"baseline: {pods} plain pods created directly ...", flush=True)
    base = baseline(bench, pods)
    runs = [run_kubetune(bench, args.jobs, args.nodes_per_job, 50, 100, directory)]
    if args.peer == "kubeflow":
        runs.append(run_kubetune(bench, args.jobs, args.nodes_per_job, 20, 30, directory))
        runs.append(run_kubeflow(bench, args.jobs, args.nodes_per_job, directory))
    bench.kubectl("delete", "nodes", "-l", "kubetune.io/bench=true", "--wait=false")

    width = 16
    print(f"\n{args.jobs} jobs x {args.nodes_per_job} workers ({pods} pods, 1 nvidia.com/gpu each) on kwok nodes\n")
    print(f"{'':34}" + "".join(f"{r['name']:>{width}}" for r in runs) + f"{'baseline':>{width}}")

    def row(label: str, values: list[str], base_value: str = "-") -> None:
        print(f"{label:34}" + "".join(f"{v:>{width}}" for v in values) + f"{base_value:>{width}}")

    row("time until all pods Running (s)", [f"{r['pods_running']:.1f}" for r in runs], f"{base:.1f}")
    row("time until all jobs Running (s)", [f"{r['jobs_running']:.1f}" for r in runs])
    row("pods/s", [f"{pods / r['pods_running']:.1f}" for r in runs], f"{pods / base:.1f}")
    row("API requests per job (server)", [f"{r['requests']:.1f}" for r in runs])
    row("own API calls per job", [f"{r['own_calls']:.1f}" if "own_calls" in r else "-" for r in runs])
    row("reconciles per job", [f"{r['reconciles']:.1f}" if "reconciles" in r else "-" for r in runs])
    row("reconcile p50 / p99 (ms)", [f"{r['p50'] * 1000:.0f} / {r['p99'] * 1000:.0f}" if "p50" in r else "-"
                                     for r in runs])
    row("peak RSS (MiB)", [f"{r['rss']:.0f}" for r in runs])
    if args.peer:
        peer = runs[-1]
        print("\nkubetune / kubeflow: " + "; ".join(
            f"{r['name']}: time {r['pods_running'] / peer['pods_running']:.2f}x, requests "
            f"{r['requests'] / peer['requests']:.2f}x, RSS {r['rss'] / peer['rss']:.2f}x" for r in runs[:-1]))
    print("kubetune's own calls per job by operation: " + ", ".join(
        f"{op} {n:.1f}" for op, n in sorted(runs[0]["by_op"].items(), key=lambda kv: -kv[1])))
    print(f"\n(API requests at the server: every request of the operator's ServiceAccount, watches and\n"
          f" kopf's annotation patches included.) logs: {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
