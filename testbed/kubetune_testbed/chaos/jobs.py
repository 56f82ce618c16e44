"""The training jobs the suite keeps running, and what it sees of them while faults hit them.

Each job is examples/quickstart.yaml with the tiny Llama, the suite's bucket
(reached through the fault proxy: the Secret's AWS_ENDPOINT_URL), a
checkpoint every few steps, every checkpoint kept (so that each commit can be
verified at the end) and a backoff budget no fault sequence can spend.

The Watcher polls every job, its pods and rank 0's log (`kubectl logs`), and
records each run of the trainer: the step it started from (train_start) and
the last step, commits and saves it logged. Two runs in a row of the same job
are a restart; what lies between them is the work lost.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..quickstart import QUICKSTART
from .kube import Kube

ATTEMPT_LABEL = "kubetune.io/attempt"
RANK_LABEL = "kubetune.io/rank"
JOB_LABEL = "kubetune.io/job-name"
S3_SECRET = "chaos-s3"


def job_manifest(name: str, bucket: str, max_steps: int, every_steps: int, nodes: int) -> dict[str, Any]:
    """The quick start with the tiny model and this run's bucket, checkpoints and budget."""
    job: dict[str, Any] = yaml.safe_load(QUICKSTART.read_text())
    job["metadata"] = {"name": name}
    s = job["spec"]
    s["model"]["uri"] = f"s3://{bucket}/models/tiny/"
    s["dataset"].update(train=f"s3://{bucket}/data/train.jsonl", eval=f"s3://{bucket}/data/eval.jsonl")
    s["training"].update(maxSteps=max_steps, evalEverySteps=max_steps, globalBatchSize=4 * nodes)
    s["resources"]["nodes"] = nodes
    # The quick start's half core per worker: two jobs' four workers and the operator's two replicas would
    # want more than the test bed's 2-core node has, and a worker left Pending (Unschedulable) takes no fault.
    s["resources"]["requests"] = {"cpu": "250m"}
    s["checkpoint"] = {"everySteps": every_steps, "keepLast": 1000}  # every commit stays, to be verified
    s["output"]["uri"] = f"s3://{bucket}/output/{name}/"
    s["storage"]["credentialsSecret"] = S3_SECRET
    # Faults must not fail a job by spending its budgets; a rank frozen while training is found within
    # 30 s, one frozen while starting (staging, rendezvous, model load) within 240 s.
    s["runPolicy"] = {"backoffLimit": 1000, "hangRestartLimit": 1000, "progressDeadlineSeconds": 30,
                      "startupDeadlineSeconds": 240}
    s["env"] = [{"name": "KUBETUNE_STATUS_INTERVAL_SECONDS", "value": "1"}]
    return job


def is_terminal(job: dict[str, Any]) -> bool:
    return (job.get("status") or {}).get("phase") in ("Succeeded", "Failed")


@dataclass
class Run:
    """One run of a job's trainer, as rank 0 logged it (from train_start on)."""

    job: str
    attempt: str
    pod_uid: str
    started: float  # train_start's time (the trainer's clock)
    start_step: int
    last_step: int = 0
    last_step_at: float = 0.0
    committed: set[int] = field(default_factory=set)
    saved: dict[int, float] = field(default_factory=dict)  # step -> when it was saved (before its upload)


@dataclass
class Restart:
    """Two runs in a row of one job: the work between them was lost."""

    job: str
    reached: int  # the last step the previous run logged
    resumed: int  # the step the next run started from
    newest_commit: int  # the newest commit any earlier run logged
    uncommitted: tuple[int, ...]  # checkpoints the previous run saved after `resumed` that were never committed
    uncommitted_since: float  # when the oldest of them was saved (0 when there is none)
    newest_save: int  # the newest checkpoint the previous run saved (committed or not)
    at: float  # when the next run started
    since: float  # when the previous run was last seen training (its last step logged, or its start)
    store_faulty: bool = False  # an S3 fault was on while those checkpoints uploaded (the suite sets it)

    @property
    def lost(self) -> int:
        return max(0, self.reached - self.resumed)

    @property
    def upload_in_flight(self) -> bool:
        return bool(self.uncommitted)

    def within_bound(self, every_steps: int) -> bool:
        """The work a restart may lose with checkpoints that stream while training goes on.

        Never a resume from older than the newest commit. At most everySteps, unless the checkpoint
        saved after the resume point was still uploading when the fault hit: then at most everySteps
        past that save (so less than twice everySteps), and more than one checkpoint left uncommitted
        only while an S3 fault kept them from uploading.
        """
        if self.resumed < self.newest_commit:
            return False
        if self.lost <= every_steps:
            return True
        return (bool(self.uncommitted) and self.reached - self.newest_save <= every_steps
                and (len(self.uncommitted) == 1 or self.store_faulty))


class Watcher(threading.Thread):
    """Polls the suite's namespace every `interval` seconds until stopped."""

    def __init__(self, kube: Kube, namespace: str, secret_values: list[str], interval: float = 2.0) -> None:
        super().__init__(name="chaos-watcher", daemon=True)
        self.kube, self.ns, self.interval = kube, namespace, interval
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.runs: dict[tuple[str, float], Run] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.secret_values = [v for v in secret_values if v]
        self.secrets_seen: list[str] = []  # logs and annotations seen during the run that held a secret value
        self.duplicate_pods: set[str] = set()
        self._suspects: set[str] = set()
        self.errors = 0

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.poll()
            except Exception:  # an API server that is restarting; the next poll tries again
                self.errors += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)

    def poll(self) -> None:
        with self.lock:
            jobs = {j["metadata"]["name"]: j for j in self.kube.jobs(self.ns)}
            pods = self.kube.pods(self.ns, JOB_LABEL)
            self.jobs.update(jobs)
            self.pods = pods
            self._check_duplicates(pods)
            for pod in pods:
                # Every attempt's pods, before a gang restart deletes them: the trainer's config is an annotation.
                annotations = json.dumps(pod["metadata"].get("annotations") or {})
                if any(v in annotations for v in self.secret_values):
                    self.secrets_seen.append(f"annotations of {pod['metadata']['name']} seen during the run")
                labels = pod["metadata"].get("labels", {})
                if labels.get(RANK_LABEL) != "0" or pod.get("status", {}).get("phase") != "Running":
                    continue
                text = self.kube.log(self.ns, pod["metadata"]["name"])
                if any(v in text for v in self.secret_values):
                    self.secrets_seen.append(f"log of {pod['metadata']['name']} read during the run")
                self._record(labels[JOB_LABEL], labels.get(ATTEMPT_LABEL, ""), pod["metadata"]["uid"], text)

    def _check_duplicates(self, pods: list[dict[str, Any]]) -> None:
        """Two live pods of one rank of one job, seen in two polls in a row."""
        live: dict[str, int] = {}
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                continue
            key = f"{meta['labels'].get(JOB_LABEL)}/rank-{meta['labels'].get(RANK_LABEL)}"
            live[key] = live.get(key, 0) + 1
        now = {key for key, count in live.items() if count > 1}
        self.duplicate_pods |= now & self._suspects
        self._suspects = now

    def _record(self, job: str, attempt: str, uid: str, text: str) -> None:
        from kubetune_trainer.logs import parse_log_lines

        run: Run | None = None
        for event in parse_log_lines(text):
            kind = event.get("event")
            if kind == "train_start":
                key = (job, float(event["time"]))
                run = self.runs.setdefault(key, Run(job, attempt, uid, float(event["time"]),
                                                    int(event["start_step"]), int(event["start_step"])))
            elif run is None:
                continue
            elif kind == "step" and int(event["step"]) >= run.last_step:
                run.last_step, run.last_step_at = int(event["step"]), float(event["time"])
            elif kind == "checkpoint_committed":
                run.committed.add(int(event["step"]))
            elif kind == "checkpoint_saved":
                run.saved.setdefault(int(event["step"]), float(event["time"]))

    # ------------------------------------------------------------ what the polls add up to
    def restarts(self) -> list[Restart]:
        with self.lock:
            runs = sorted(self.runs.values(), key=lambda r: (r.job, r.started))
        found = []
        for prev, nxt in itertools.pairwise(runs):
            if prev.job != nxt.job:
                continue
            earlier = [r for r in runs if r.job == nxt.job and r.started < nxt.started]
            newest = max((s for r in earlier for s in r.committed), default=0)
            uncommitted = sorted(s for s in prev.saved if s > nxt.start_step and s not in prev.committed)
            found.append(Restart(nxt.job, prev.last_step, nxt.start_step, newest, tuple(uncommitted),
                                 prev.saved[uncommitted[0]] if uncommitted else 0.0,
                                 max(prev.saved, default=0), nxt.started, max(prev.started, prev.last_step_at)))
        return found

    def running_jobs(self) -> list[str]:
        """Jobs that are not finished, sorted."""
        with self.lock:
            return sorted(name for name, job in self.jobs.items() if not is_terminal(job))

    def training(self) -> dict[str, float]:
        """Unfinished jobs whose rank 0 logged train_start in a pod that runs now: the start of that
        run (which identifies it), by job."""
        with self.lock:
            unfinished = {name for name, job in self.jobs.items() if not is_terminal(job)}
            uids = {p["metadata"]["uid"] for p in self.pods if p.get("status", {}).get("phase") == "Running"}
            current: dict[str, float] = {}
            for run in self.runs.values():
                if run.pod_uid in uids and run.job in unfinished:
                    current[run.job] = max(current.get(run.job, 0.0), run.started)
            return dict(sorted(current.items()))

    def live_workers(self, job: str) -> list[dict[str, Any]]:
        """The job's worker pods that run now and are not being deleted, by name."""
        with self.lock:
            return sorted((p for p in self.pods if p["metadata"]["labels"].get(JOB_LABEL) == job
                           and p["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
                           and p.get("status", {}).get("phase") == "Running"
                           and not p["metadata"].get("deletionTimestamp")),
                          key=lambda p: p["metadata"]["name"])
