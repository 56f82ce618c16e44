"""The faults: their kinds, a schedule drawn from a seed, and the hands that inject them.

    kill-trainer        SIGKILL of one trainer rank process (torchrun's child) of a running job
    stop-rank           SIGSTOP of one rank: a hang (left stopped: found by its peers' watchdogs or the
                        operator's progress backstop)
    delete-worker       `kubectl delete pod` of one worker of a running job
    s3-outage           the S3 proxy resets every connection for a while
    s3-slow             the S3 proxy adds latency and caps throughput for a while
    s3-5xx              the S3 proxy answers part of the requests 503 SlowDown for a while
    s3-drop             the S3 proxy cuts part of the connections mid-reply for a while
    kill-operator       SIGKILL of the operator's leader (its pod's process; the node agent restarts it)
    restart-apiserver   the kube-apiserver stopped and started again
    restart-node-agent  the node agent stopped and started again (its pods' processes with it)

The schedule (which kind, after how long, how long an S3 fault lasts, which
job and rank) comes from one random.Random(seed); which jobs are there to
pick from depends on how the run goes, so the same seed gives the same kinds
and timings, and the same picks among the same candidates.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass

from ..chart import OperatorRelease
from ..cluster import LocalCluster
from ..faultproxy import FaultProxy
from . import processes
from .jobs import Watcher
from .kube import Kube

KINDS = ("kill-trainer", "stop-rank", "delete-worker", "s3-outage", "s3-slow", "s3-5xx", "s3-drop",
         "kill-operator", "restart-apiserver", "restart-node-agent")
DEFAULT_KINDS = KINDS
# How often each kind is drawn, relative to the others.
WEIGHTS = {"kill-trainer": 3.0, "stop-rank": 1.0, "delete-worker": 2.0, "s3-outage": 1.0, "s3-slow": 1.0,
           "s3-5xx": 1.0, "s3-drop": 1.0, "kill-operator": 1.5, "restart-apiserver": 1.0, "restart-node-agent": 0.7}
JOB_KINDS = frozenset({"kill-trainer", "stop-rank", "delete-worker"})
S3_MODES = {"s3-outage": "outage", "s3-slow": "slow", "s3-5xx": "error", "s3-drop": "drop"}


@dataclass(frozen=True)
class Planned:
    """One fault of the schedule, before it happens."""

    kind: str
    wait: float  # seconds after the previous fault
    duration: float  # S3 faults: how long the proxy misbehaves
    pick: float  # in [0, 1): which candidate job
    rank_pick: float  # in [0, 1): which rank


def schedule(seed: int, count: int, kinds: tuple[str, ...], mean_wait: float) -> list[Planned]:
    """`count` faults: every kind once first (in a seeded order), then drawn by WEIGHTS."""
    rng = random.Random(seed)
    order = list(kinds)
    rng.shuffle(order)
    while len(order) < count:
        order.append(rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0])
    plan = []
    for kind in order[:count]:
        duration = rng.uniform(5, 15) if kind == "s3-outage" else rng.uniform(8, 25)
        plan.append(Planned(kind, rng.uniform(0.5, 1.5) * mean_wait, duration, rng.random(), rng.random()))
    return plan


@dataclass
class Injected:
    """A fault that happened."""

    kind: str
    at: float  # time.time() when it was injected
    target: str  # what it hit: a job, a pod, "S3", the operator's leader, a component
    job: str = ""  # the job it hit; "" for the faults that hit everything
    seconds: float = 0.0  # how long the injection took (a restart) or lasted (S3)


class Injector:
    """Injects one planned fault; None when it has no target right now (the caller retries)."""

    def __init__(self, cluster: LocalCluster, kube: Kube, release: OperatorRelease, proxy: FaultProxy,
                 watcher: Watcher, namespace: str) -> None:
        self.cluster, self.kube, self.release, self.proxy = cluster, kube, release, proxy
        self.watcher, self.ns = watcher, namespace
        self.stopped_pids: list[int] = []
        self.hit_runs: set[tuple[str, float]] = set()  # (job, start of its run) that a job fault hit
        self._s3_timer: threading.Timer | None = None

    def inject(self, fault: Planned) -> Injected | None:
        if fault.kind in JOB_KINDS:
            return self._job_fault(fault)
        if fault.kind in S3_MODES:
            return self._s3(fault)
        if fault.kind == "kill-operator":
            return self._kill_operator()
        component = {"restart-apiserver": "kube-apiserver", "restart-node-agent": "node-agent"}[fault.kind]
        started = time.time()
        # kube-apiserver: SIGKILL after 5 s of its graceful shutdown, which takes half a minute here;
        # the node agent stops its pods' processes first (a few seconds) and is given the time.
        self.cluster.restart(component, stop_timeout=5 if component == "kube-apiserver" else 30)
        return Injected(fault.kind, started, component, seconds=time.time() - started)

    def _job_fault(self, fault: Planned) -> Injected | None:
        # A run that a fault hit already is on its way down: the next fault waits for the next run.
        training = self.watcher.training()
        candidates = [job for job, run in training.items() if (job, run) not in self.hit_runs]
        if not candidates:
            return None
        job = candidates[int(fault.pick * len(candidates))]
        workers = self.watcher.live_workers(job)
        if not workers:
            return None
        pod = workers[int(fault.rank_pick * len(workers))]["metadata"]["name"]
        if fault.kind == "delete-worker":
            self.kube.call(self.kube.core.delete_namespaced_pod, pod, self.ns)
            self.hit_runs.add((job, training[job]))
            return Injected(fault.kind, time.time(), pod, job)
        ranks = processes.trainer_ranks(self.ns, pod)
        if not ranks:
            return None
        victim = ranks[int(fault.rank_pick * len(ranks))]
        sig = signal.SIGKILL if fault.kind == "kill-trainer" else signal.SIGSTOP
        if not processes.signal_pid(victim.pid, sig):
            return None
        if sig == signal.SIGSTOP:
            self.stopped_pids.append(victim.pid)
        self.hit_runs.add((job, training[job]))
        return Injected(fault.kind, time.time(), f"{pod} rank {victim.env.get('RANK', '?')}", job)

    def _s3(self, fault: Planned) -> Injected:
        if self._s3_timer is not None:
            self._s3_timer.cancel()
        self.proxy.set_mode(S3_MODES[fault.kind])
        self._s3_timer = threading.Timer(fault.duration, self.proxy.set_mode, args=("pass",))
        self._s3_timer.daemon = True
        self._s3_timer.start()
        return Injected(fault.kind, time.time(), "S3", seconds=fault.duration)

    def _kill_operator(self) -> Injected | None:
        leader = self.release.leader()
        procs = processes.operator_processes(leader) if leader else []
        if not procs:
            return None
        for proc in procs:
            processes.signal_pid(proc.pid, signal.SIGKILL)
        return Injected("kill-operator", time.time(), leader)

    def settle(self) -> None:
        """Undo what lasts: S3 back to normal, stopped ranks continued (so they can end)."""
        if self._s3_timer is not None:
            self._s3_timer.cancel()
        self.proxy.set_mode("pass")
        processes.resume_stopped(self.stopped_pids)
