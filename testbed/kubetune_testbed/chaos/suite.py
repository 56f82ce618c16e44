"""One fault-injection run: set up, keep jobs training while faults hit them, drain, check, clean up.

    setup     the operator installed with the chart (its own release and namespace; other installed
              operators paused), the fault proxy in front of MinIO, a namespace with the S3 Secret
              pointing at the proxy, a bucket with the tiny model and the chat data
    faults    `jobs` jobs train at all times (a finished one is replaced); the schedule's faults are
              injected at its pace, each as soon as it has a target
    drain     no new jobs; the running ones finish
    checks    checks.py, then the table
    cleanup   always, also on Ctrl-C or an error: S3 healed, stopped ranks continued, the control
              plane's restarted components running, the namespace, the release and the bucket deleted

The time limit covers all of it: the faults begin once a trainer trains and
are paced over half of the time then left; faults still waiting for a target
may come later, as long as the drain keeps 300 s (30% on a short run); the
drain ends 90 s before the limit, so checks and cleanup fit inside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..chart import OperatorRelease, installed_operators_paused
from ..cluster import LocalCluster
from ..datasets import write_chat_dataset
from ..faultproxy import FaultProxy
from ..models import ensure_tiny
from ..s3folders import delete_prefix, upload_folder
from . import checks
from .faults import DEFAULT_KINDS, JOB_KINDS, S3_MODES, Injected, Injector, schedule
from .jobs import S3_SECRET, Watcher, is_terminal, job_manifest
from .kube import Kube

CHECKS_AND_CLEANUP_SECONDS = 90.0
# After an S3 fault ends, an upload may still wait out one backoff (at most 30 s) before it retries.
STORE_RECOVERY_SECONDS = 45.0
FAULT_SHARE = 0.5  # of the time between the first training step and the checks
# A fault that waits for its target (a job fault when no trainer is training yet) may come later,
# as long as the drain keeps this much time (or 30% of it, on a short run) for the jobs to finish:
# a restart after the last fault, a job's 40 steps, a frozen rank's deadline.
DRAIN_RESERVE_SECONDS = 300.0
DRAIN_RESERVE_SHARE = 0.3


@dataclasses.dataclass(frozen=True)
class Options:
    seed: int = 1
    faults: int = 100
    jobs: int = 2  # jobs training at the same time
    time_limit: float = 2700.0
    kinds: tuple[str, ...] = DEFAULT_KINDS
    nodes: int = 2  # worker pods per job
    max_steps: int = 40
    every_steps: int = 5  # checkpoint.everySteps


class Suite:
    def __init__(self, cluster: LocalCluster, options: Options, say: Callable[[str], None] = print) -> None:
        self.cluster, self.o = cluster, options
        self.t0 = time.monotonic()
        self._say = say
        token = secrets.token_hex(3)
        self.ns = f"chaos-{token}"
        self.bucket = f"chaos-{token}"
        self.release = OperatorRelease(cluster, name="kubetune-chaos", namespace=f"kubetune-chaos-{token}")
        self.kube = Kube(cluster)
        self.s3 = _s3_client(cluster)
        self.submitted: list[str] = []
        self.faults: list[Injected] = []
        self.revived: list[str] = []  # control-plane components that exited by themselves (see _revive)

    def say(self, text: str) -> None:
        self._say(f"[{time.monotonic() - self.t0:6.1f}s] {text}")

    @property
    def deadline(self) -> float:
        return self.t0 + self.o.time_limit

    def run(self) -> checks.Report:
        with contextlib.ExitStack() as cleanup:
            cleanup.enter_context(installed_operators_paused(self.cluster, keep_namespace=self.release.namespace))
            proxy = self._setup(cleanup)
            env = self.cluster.env()
            watcher = Watcher(self.kube, self.ns, [env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]])
            watcher.start()
            cleanup.callback(watcher.stop)
            injector = Injector(self.cluster, self.kube, self.release, proxy, watcher, self.ns)
            cleanup.callback(self._heal, injector)
            self._inject(watcher, injector)
            self._drain(watcher)
            return self._check(watcher)
        raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow exceptions

    # ------------------------------------------------------------ setup
    def _setup(self, cleanup: contextlib.ExitStack) -> FaultProxy:
        self.say(f"installing the operator: helm upgrade --install {self.release.name} charts/kubetune "
                 f"-n {self.release.namespace}")
        cleanup.callback(self._uninstall)
        self.release.install()
        self.s3.create_bucket(Bucket=self.bucket)
        cleanup.callback(self._delete_bucket)
        with tempfile.TemporaryDirectory() as tmp:
            train, _ = write_chat_dataset(Path(tmp))
            upload_folder(self.s3, Path(ensure_tiny()), self.bucket, "models/tiny/")
            upload_folder(self.s3, train.parent, self.bucket, "data/")
        minio = self.cluster.state.ports["minio"]
        proxy = FaultProxy(self.cluster.host_ip, (self.cluster.host_ip, minio), seed=self.o.seed).start()
        cleanup.callback(proxy.stop)
        self.say(f"S3 fault proxy {proxy.url} -> MinIO :{minio}; namespace {self.ns}, bucket {self.bucket}")
        cleanup.callback(self._delete_namespace)
        self.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
        env = self.cluster.env()
        self.kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": S3_SECRET, "namespace": self.ns},
                         "stringData": {"AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                                        "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
                                        "AWS_ENDPOINT_URL": proxy.url}})
        self._wait_for_service_account()
        return proxy

    def _wait_for_service_account(self) -> None:
        for _ in range(120):
            with contextlib.suppress(Exception):
                self.kube.call(self.kube.core.read_namespaced_service_account, "default", self.ns)
                return
            time.sleep(0.5)

    def _submit(self) -> None:
        name = f"job-{len(self.submitted) + 1:03d}"
        self.kube.apply({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                         **job_manifest(name, self.bucket, self.o.max_steps, self.o.every_steps, self.o.nodes),
                         "metadata": {"name": name, "namespace": self.ns}})
        self.submitted.append(name)
        self.say(f"submitted {name} ({self.o.nodes} workers, {self.o.max_steps} steps, "
                 f"a checkpoint every {self.o.every_steps})")

    def _keep_jobs_running(self, watcher: Watcher) -> None:
        seen = watcher.jobs
        running = [n for n in self.submitted if n not in seen or not is_terminal(seen[n])]
        for _ in range(self.o.jobs - len(running)):
            self._submit()

    # ------------------------------------------------------------ faults
    def _inject(self, watcher: Watcher, injector: Injector) -> None:
        self._keep_jobs_running(watcher)
        # The first fault waits for a trainer to train (at most half of the time left); the faults
        # then get half of what is left before checks and cleanup, the drain the rest.
        start_by = time.monotonic() + (self.deadline - CHECKS_AND_CLEANUP_SECONDS - time.monotonic()) * 0.5
        while not watcher.training() and time.monotonic() < start_by:
            time.sleep(1)
        self.say("a trainer is training: faults begin")
        left = self.deadline - CHECKS_AND_CLEANUP_SECONDS - time.monotonic()
        fault_end = time.monotonic() + left * FAULT_SHARE
        # Faults still waiting for a target at the end of their share may take the drain's time that
        # the jobs do not need to finish.
        overtime_end = max(fault_end, time.monotonic() + left - min(DRAIN_RESERVE_SECONDS, left * DRAIN_RESERVE_SHARE))
        plan = schedule(self.o.seed, self.o.faults, self.o.kinds, mean_wait=1.0)
        pace = max(fault_end - time.monotonic(), 0.0) / max(sum(p.wait for p in plan), 1e-9)
        self.say(f"{len(plan)} faults of {len(set(self.o.kinds))} kinds (seed {self.o.seed}), "
                 f"one every {pace * sum(p.wait for p in plan) / max(len(plan), 1):.1f} s on average")
        # Faults come in the schedule's order, each after its wait; one that has no target now (no
        # job is training) waits, and the next one that has a target goes first.
        pending = list(plan)
        due = time.monotonic() + pending[0].wait * pace
        while pending and time.monotonic() < (fault_end if time.monotonic() < due else overtime_end):
            self._revive()
            self._keep_jobs_running(watcher)
            if time.monotonic() < due:
                time.sleep(0.5)
                continue
            if any(p.kind in JOB_KINDS for p in pending):
                watcher.poll()  # the freshest view of who is training, and the step before the fault
            injected = None
            for planned in pending:
                injected = injector.inject(planned)
                if injected is not None:
                    pending.remove(planned)
                    break
            if injected is None:
                time.sleep(1)
                continue
            self.faults.append(injected)
            took = f" ({injected.seconds:.1f} s)" if injected.seconds else ""
            self.say(f"fault {len(self.faults)}/{len(plan)} {injected.kind}: {injected.target}{took}")
            if pending:  # the pace adapts: restarts and waits for a target take time too
                left = 0.9 * max(fault_end - time.monotonic(), 0.0)
                due = time.monotonic() + pending[0].wait * left / sum(p.wait for p in pending)
        if pending:
            self.say(f"the fault phase ended with {len(pending)} faults not injected "
                     f"({', '.join(p.kind for p in pending)})")

    def _revive(self) -> None:
        """A control-plane component that exited by itself is started again, as a real node's kubelet
        would, and said: the table's notes list each."""
        for name, last in self.cluster.revive():
            note = f"{name} exited by itself and was started again (its log's last line: {last[:300]})"
            self.revived.append(note)
            self.say(note)

    def _drain(self, watcher: Watcher) -> None:
        drain_end = self.deadline - CHECKS_AND_CLEANUP_SECONDS
        self.say(f"no more faults; waiting up to {max(drain_end - time.monotonic(), 0):.0f} s "
                 "for the jobs to finish")
        while time.monotonic() < drain_end:
            self._revive()
            seen = watcher.jobs
            if all(n in seen and is_terminal(seen[n]) for n in self.submitted):
                break
            time.sleep(1)

    # ------------------------------------------------------------ checks
    def _check(self, watcher: Watcher) -> checks.Report:
        watcher.poll()
        watcher.stop()
        self.say("checking: checkpoints, orphans, duplicates, secrets")
        jobs = [watcher.jobs[n] for n in self.submitted if n in watcher.jobs]
        verified = checks.verify_checkpoints(self.s3, self.bucket,
                                             [f"output/{n}/checkpoints/" for n in self.submitted])
        orphans = checks.orphans(self.kube, self.ns)
        for _ in range(10):  # processes of pods that just ended get a few seconds
            if not orphans:
                break
            time.sleep(2)
            orphans = checks.orphans(self.kube, self.ns)
        env = self.cluster.env()
        found = checks.find_secrets(self.kube, [self.ns, self.release.namespace],
                                    [env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]], watcher.secrets_seen)
        restarts = []
        for restart in watcher.restarts():
            # The first fault that hit this job after its previous run was last seen training.
            cause = [f for f in self.faults if restart.since <= f.at < restart.at and f.job in ("", restart.job)]
            if restart.uncommitted:  # was the store failing while its checkpoints uploaded?
                restart = dataclasses.replace(restart, store_faulty=any(
                    f.kind in S3_MODES and f.at <= restart.at
                    and f.at + f.seconds + STORE_RECOVERY_SECONDS >= restart.uncommitted_since
                    for f in self.faults))
            restarts.append((restart, cause[0].kind if cause else ""))
        notes = list(self.revived)
        if "stop-rank" in self.o.kinds:
            notes.append("stop-rank leaves a rank stopped: the job recovers only through the operator's hang detection")
        return checks.Report(seed=self.o.seed, kinds=self.o.kinds, requested=self.o.faults, faults=self.faults,
                             jobs=jobs, restarts=restarts, every_steps=self.o.every_steps, checkpoints=verified,
                             orphans=orphans, duplicates=sorted(watcher.duplicate_pods), secrets=found,
                             seconds=time.monotonic() - self.t0, time_limit=self.o.time_limit, notes=notes)

    # ------------------------------------------------------------ cleanup
    def _heal(self, injector: Injector) -> None:
        injector.settle()
        for component in ("kube-apiserver", "node-agent"):
            try:
                self.cluster.start_component(component)
            except Exception as e:  # keep cleaning up; `make down && make up` repairs the rest
                self.say(f"cleanup: could not start {component} again: {e}")

    def _delete_namespace(self) -> None:
        self.say(f"cleanup: deleting namespace {self.ns}")
        with contextlib.suppress(Exception):
            self.kube.call(self.kube.core.delete_namespace, self.ns)
        _wait_gone(lambda: self.kube.call(self.kube.core.read_namespace, self.ns), 60)

    def _uninstall(self) -> None:
        with contextlib.suppress(Exception):
            self.release.uninstall()
        with contextlib.suppress(Exception):
            self.kube.call(self.kube.core.delete_namespace, self.release.namespace)

    def _delete_bucket(self) -> None:
        with contextlib.suppress(Exception):
            delete_prefix(self.s3, self.bucket)
            self.s3.delete_bucket(Bucket=self.bucket)


def _wait_gone(read: Callable[[], Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            read()
        except Exception:
            return
        time.sleep(1)


def _s3_client(cluster: LocalCluster) -> Any:
    import boto3

    env = cluster.env()
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
