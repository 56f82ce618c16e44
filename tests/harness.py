"""Helpers for operator tests: the operator as a real process, a job builder, kubectl on jobs.

`ftj()` builds FineTuneJob manifests for tests (a test builder in the JobSet
style: defaults that are valid, overrides by keyword).
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import yaml

from kubetune_api import format_timestamp, utc_now
from kubetune_testbed import REPO
from kubetune_testbed.nodes import FAKE_NODE_TOLERATION
from kubetune_testbed.ports import free_port
from kubetune_testbed.quickstart import QUICKSTART

# What a cluster needs before the operator: the CRDs, and the admission policy that keeps each worker to its
# own job's status (the chart installs both; the `crd` fixture applies them with kubectl).
CLUSTER_MANIFESTS = [*sorted((REPO / "crds").glob("*.yaml")),
                     REPO / "charts" / "kubetune" / "files" / "worker-status-policy.yaml"]

# kwok's fake nodes: pods placed there are marked Running and run nothing. Pods that do not
# tolerate their taint (FAKE_NODE_TOLERATION) go to the node agent's node and really run.
FAKE_NODE_SELECTOR = {"type": "kwok"}


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition", interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except AssertionError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def ftj(name: str, nodes: int = 2, gpus: int = 8, metadata: dict[str, Any] | None = None,
        **spec: Any) -> dict[str, Any]:
    """A valid FineTuneJob on `nodes` x `gpus` of kwok's fake nodes; keyword arguments are merged into its spec
    and `metadata` (labels, annotations) into its metadata.

    Its workers tolerate the fake nodes' taint and select them, so they never land on
    the node agent's node, where they would really run. Its preflight is off: a preflight pod
    runs the trainer's checks for real, which kwok's pods cannot (tests of the preflight turn it on
    and run it on the node agent's node, or finish its pod themselves).
    """
    base = {
        "model": {"uri": "s3://models/smollm2-135m-instruct/"},
        "dataset": {"train": "s3://datasets/chat/train.jsonl", "format": "chat"},
        "training": {"maxSteps": 100, "microBatchSize": 1},
        "resources": {"nodes": nodes, "gpusPerNode": gpus, "tolerations": [FAKE_NODE_TOLERATION],
                      "nodeSelector": FAKE_NODE_SELECTOR},
        "image": "registry.example.com/kubetune/trainer:test",
        "output": {"uri": f"s3://models/{name}/"},
        "storage": {"endpoint": "http://minio.example:9000", "credentialsSecret": "s3-credentials"},
        "preflight": {"enabled": False},
    }
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": deep_merge({"name": name}, metadata or {}), "spec": deep_merge(base, spec)}


class OperatorProcess:
    """`python -m kubetune_operator` as a child process, killable like a crashed pod.

    By default it runs `--standalone` with free metrics and health ports and quick resyncs
    added to `env` on each start; `args` and `settings` replace those (`settings={}`: `env`
    as it is, which must then name KUBETUNE_HEALTH_PORT).
    """

    def __init__(self, env: dict[str, str], log: Path, args: Sequence[str] = ("--standalone",),
                 settings: Mapping[str, str] | None = None) -> None:
        self.env = env
        self.log = log
        self.args = tuple(args)
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0

    def start(self) -> Self:
        settings = self.settings if self.settings is not None else {
            "KUBETUNE_METRICS_PORT": str(free_port()), "KUBETUNE_HEALTH_PORT": str(free_port()),
            "KUBETUNE_RESYNC_SECONDS": "2", "KUBETUNE_LOG_LEVEL": "INFO"}
        env = {**self.env, **settings}
        self.metrics_port, health = int(env.get("KUBETUNE_METRICS_PORT", 0)), env["KUBETUNE_HEALTH_PORT"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "kubetune_operator", *self.args],
                                         env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}; {self.log}:\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        # Ready: standalone, once kopf has started; with leader election, once it has read the Lease.
        wait_for(healthy, timeout=60, what="the operator's readiness endpoint")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())


class Recorder:
    """Every version of the objects of one kind in a namespace, from a `kubectl get --watch`."""

    def __init__(self, cluster: Any, namespace: str, out: Path, kind: str = "ftj") -> None:
        self.out = out
        with open(out, "wb") as sink:
            self.proc = subprocess.Popen(
                [str(cluster.local.bins.kube("kubectl")), "get", kind, "-n", namespace, "--watch", "-o", "json"],
                stdout=sink, stderr=subprocess.DEVNULL, env=cluster.env)

    def stop(self) -> list[dict[str, Any]]:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        text, objects, decoder, i = self.out.read_text(), [], json.JSONDecoder(), 0
        while i < len(text):
            if text[i].isspace():
                i += 1
                continue
            obj, i = decoder.raw_decode(text, i)
            objects.append(obj)
        return objects


class Jobs:
    """kubectl on FineTuneJobs and their pods in one namespace."""

    apply_args: tuple[str, ...] = ()  # more `kubectl apply` flags (a subclass's: server-side apply)

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster, self.ns = cluster, namespace

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """`kubectl apply`; returns the object as the API server stored it."""
        out = self.cluster.kubectl("apply", *self.apply_args, "-n", self.ns, "-o", "json", "-f", "-",
                                   input=json.dumps(manifest))
        return dict(json.loads(out.stdout))

    def get(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.cluster.kubectl("get", "ftj", name, "-n", self.ns, "-o", "json").stdout))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def pods(self, name: str) -> list[dict[str, Any]]:
        out = self.cluster.kubectl("get", "pods", "-n", self.ns, "-l", f"kubetune.io/job-name={name}", "-o", "json")
        return sorted(json.loads(out.stdout)["items"], key=lambda p: p["metadata"]["name"])

    def patch_spec(self, name: str, patch: dict[str, Any]) -> None:
        self.cluster.kubectl("patch", "ftj", name, "-n", self.ns, "--type=merge", "-p", json.dumps({"spec": patch}))

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.cluster.kubectl("get", "events", "-n", self.ns, "--field-selector",
                                   f"involvedObject.kind=FineTuneJob,involvedObject.name={name}", "-o", "json")
        return list(json.loads(out.stdout)["items"])

    def terminate_worker(self, pod: str, exit_code: int, message: str = "") -> None:
        """Mark a worker's trainer container terminated, through the status subresource, as a kubelet does."""
        now = format_timestamp(utc_now())
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "message": message, "startedAt": now, "finishedAt": now}
        status = {"status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}],
            "containerStatuses": [{"name": "trainer", "ready": False, "restartCount": 0,
                                   "image": "registry.example.com/kubetune/trainer:test", "imageID": "",
                                   "state": {"terminated": terminated}}],
        }}
        self.cluster.kubectl("patch", "pod", pod, "-n", self.ns, "--subresource=status", "--type=merge",
                             "-p", json.dumps(status))


# The Secret with the local MinIO's keys and endpoint that the end-to-end tests' jobs name.
S3_SECRET = "e2e-s3"


def kubectl_wait(cluster: Any, ns: str, name: str, condition: str, timeout: int) -> subprocess.CompletedProcess[str]:
    """`kubectl wait --for=condition=...` on a FineTuneJob (not raising: the caller diagnoses)."""
    return cluster.kubectl("wait", "-n", ns, f"--for=condition={condition}", f"ftj/{name}", f"--timeout={timeout}s",
                           check=False, timeout=timeout + 30)  # type: ignore[no-any-return]


def logs(cluster: Any, ns: str, pod: str) -> str:
    return str(cluster.kubectl("logs", "-n", ns, pod, check=False).stdout)


def committed_steps(s3: Any, bucket: str, prefix: str) -> list[int]:
    """Steps whose manifest.json (the commit) is in s3://bucket/prefix."""
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    return sorted(int(k[len(prefix):].split("/")[0].removeprefix("step-")) for k in keys
                  if k.endswith("/manifest.json") and k[len(prefix):].count("/") == 1)


def diagnose(cluster: Any, jobs: Jobs, name: str) -> str:
    """The job's status and the tail of each worker's log, for a failed assertion's message."""
    text = json.dumps(jobs.status(name), indent=1)
    for pod in jobs.pods(name):
        text += f"\n--- {pod['metadata']['name']}:\n" + logs(cluster, jobs.ns, pod["metadata"]["name"])[-3000:]
    return text


class Kueue:
    """Kueue's objects for one test (a ResourceFlavor, a ClusterQueue for its namespace, a LocalQueue,
    WorkloadPriorityClasses) made with kubectl as a platform team makes them; `delete` removes them."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster, self.ns = cluster, namespace
        self.cluster_scoped: list[str] = []

    def _apply(self, manifest: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        if "namespace" not in manifest["metadata"]:
            self.cluster_scoped.append(f"{manifest['kind'].lower()}.kueue.x-k8s.io/{manifest['metadata']['name']}")

    def queue(self, name: str, gpus: int, node_labels: dict[str, str], tolerations: Sequence[dict[str, Any]] = (),
              preempt_lower_priority: bool = False) -> str:
        """A flavor, a ClusterQueue of `gpus` nvidia.com/gpu on it (for this namespace only; cpu and
        memory covered too, without limiting: Kueue admits no pod requesting a resource its
        ClusterQueue does not cover) and a LocalQueue `name` pointing at it; returns the LocalQueue's name."""
        api = "kueue.x-k8s.io/v1beta2"
        self._apply({"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": name},
                     "spec": {"nodeLabels": node_labels, "tolerations": list(tolerations)}})
        cq: dict[str, Any] = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.ns}},
            "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"], "flavors": [
                {"name": name, "resources": [{"name": "cpu", "nominalQuota": 1000},
                                             {"name": "memory", "nominalQuota": "4Ti"},
                                             {"name": "nvidia.com/gpu", "nominalQuota": gpus}]}]}]}
        if preempt_lower_priority:
            cq["preemption"] = {"withinClusterQueue": "LowerPriority"}
        self._apply({"apiVersion": api, "kind": "ClusterQueue", "metadata": {"name": name}, "spec": cq})
        self._apply({"apiVersion": api, "kind": "LocalQueue", "metadata": {"name": name, "namespace": self.ns},
                     "spec": {"clusterQueue": name}})
        return name

    def priority(self, name: str, value: int) -> str:
        self._apply({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
                     "metadata": {"name": name}, "value": value})
        return name

    def workload(self, job: str) -> dict[str, Any]:
        out = self.cluster.kubectl("get", "workloads.kueue.x-k8s.io", "-n", self.ns, "-l",
                                   f"kubetune.io/job-name={job}", "-o", "json")
        (wl,) = json.loads(out.stdout)["items"]
        return dict(wl)

    def delete(self) -> None:
        self.cluster.kubectl("delete", "localqueues.kueue.x-k8s.io", "--all", "-n", self.ns, "--wait=false",
                             check=False)
        for obj in reversed(self.cluster_scoped):
            self.cluster.kubectl("delete", obj, "--ignore-not-found", "--wait=false", check=False)


def queued_job(manifest: dict[str, Any], queue: str, priority: str | None = None) -> dict[str, Any]:
    """The job with Kueue's labels: its LocalQueue and, optionally, its WorkloadPriorityClass."""
    labels = {"kueue.x-k8s.io/queue-name": queue}
    if priority:
        labels["kueue.x-k8s.io/priority-class"] = priority
    return deep_merge(manifest, {"metadata": {"labels": labels}})


def quickstart(name: str, bucket: str, **spec: Any) -> dict[str, Any]:
    """examples/quickstart.yaml with the tiny model, this test's bucket and `spec` merged in."""
    job = yaml.safe_load(QUICKSTART.read_text())
    job["metadata"]["name"] = name
    s = job["spec"]
    s["model"]["uri"] = f"s3://{bucket}/models/tiny/"
    s["dataset"].update(train=f"s3://{bucket}/data/train.jsonl", eval=f"s3://{bucket}/data/eval.jsonl")
    s["output"]["uri"] = f"s3://{bucket}/output/{name}/"
    s["storage"]["credentialsSecret"] = S3_SECRET
    # Progress patches every second instead of every 10 (the trainer's default), for the waits below.
    s["env"] = [{"name": "KUBETUNE_STATUS_INTERVAL_SECONDS", "value": "1"}]
    job["spec"] = deep_merge(s, spec)
    return dict(job)
