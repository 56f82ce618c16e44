"""The node agent's pods as the machine sees them: their processes, found in /proc.

The node agent runs every container as a local process with the pod's
environment (HOSTNAME is the pod's hostname, and the operator gives its workers
KUBETUNE_NAMESPACE and KUBETUNE_JOB_NAME), so a pod's processes are found by
reading /proc/<pid>/environ, as root. The suite signals them (SIGKILL of a
trainer, SIGSTOP of a rank, SIGKILL of the operator's leader) and counts the
ones no live pod accounts for.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PodProcess:
    pid: int
    argv: tuple[str, ...]
    env: dict[str, str]
    state: str  # /proc/<pid>/stat's state letter: R, S, T (stopped), Z ...

    @property
    def hostname(self) -> str:
        return self.env.get("HOSTNAME", "")

    @property
    def namespace(self) -> str:
        return self.env.get("KUBETUNE_NAMESPACE", "")

    @property
    def job(self) -> str:
        return self.env.get("KUBETUNE_JOB_NAME", "")

    @property
    def is_rank(self) -> bool:
        """A trainer rank (torchrun's child running kubetune_trainer), not torchrun itself."""
        return "RANK" in self.env and "kubetune_trainer" in self.argv and not self.is_launcher

    @property
    def is_launcher(self) -> bool:
        return any(Path(a).name == "torchrun" for a in self.argv[:2])

    @property
    def is_operator(self) -> bool:
        return "kubetune_operator" in self.argv


def _read(pid: int) -> PodProcess | None:
    base = Path("/proc") / str(pid)
    try:
        env_raw = (base / "environ").read_bytes()
        argv = tuple(a.decode(errors="replace") for a in (base / "cmdline").read_bytes().split(b"\0") if a)
        state = (base / "stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return None
    env = {}
    for item in env_raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return PodProcess(pid, argv, env, state)


def pod_processes(namespaces: set[str] | None = None) -> list[PodProcess]:
    """Every live process that runs for a pod (it has KUBERNETES_SERVICE_HOST, which the node agent
    sets), optionally only the trainers of jobs in `namespaces`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        proc = _read(int(entry))
        if proc is None or proc.state == "Z" or "KUBERNETES_SERVICE_HOST" not in proc.env:
            continue
        if namespaces is not None and proc.namespace not in namespaces:
            continue
        found.append(proc)
    return found


def trainer_ranks(namespace: str, pod: str) -> list[PodProcess]:
    """The trainer rank processes of one worker pod, by LOCAL_RANK."""
    ranks = [p for p in pod_processes({namespace}) if p.hostname == pod and p.is_rank]
    return sorted(ranks, key=lambda p: int(p.env.get("LOCAL_RANK", "0")))


def operator_processes(pod: str) -> list[PodProcess]:
    """The operator's process of one of the chart's pods."""
    return [p for p in pod_processes() if p.hostname == pod and p.is_operator]


def signal_pid(pid: int, sig: int) -> bool:
    """Send `sig` to one process; False when it is gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def resume_stopped(pids: list[int]) -> None:
    """SIGCONT every process the suite stopped that still exists (so it can be stopped for good)."""
    import signal

    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def trainer_pids(namespace: str, job: str) -> dict[int, int]:
    """Global rank -> pid of each trainer rank of the FineTuneJob `namespace/job`."""
    return {int(p.env["RANK"]): p.pid for p in pod_processes({namespace}) if p.job == job and p.is_rank}
