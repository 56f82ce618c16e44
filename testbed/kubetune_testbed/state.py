"""What `up` started, kept in <run>/state.json, so that `down`, `status` and a later `up` find it.

`up` records each process as it spawns it (name, pid, executable), before it
waits for the process to be ready, so a run interrupted halfway can still be
stopped. Pids get reused: a process counts as ours only while its command line
still starts with the recorded executable.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

STOP_TIMEOUT_SECONDS = 15


@dataclass
class State:
    """What `up` started: persisted to <run>/state.json so `down` can stop it."""

    ports: dict[str, int] = field(default_factory=dict)
    processes: list[dict[str, object]] = field(default_factory=list)
    s3_access_key: str = ""
    s3_secret_key: str = ""
    fake_nodes: int = 0
    pod_network: int = -1  # N of the node agent's bridge ktbrN (10.244.N.0/24); -1: no node agent

    @classmethod
    def load(cls, path: Path) -> State | None:
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)

    def all_alive(self) -> bool:
        """True when something was started and every recorded process still runs."""
        return bool(self.processes) and all(is_alive(p) for p in self.processes)

    def stop_processes(self) -> None:
        """Stop every recorded process group (newest first) and wait until each is gone."""
        for proc in reversed(self.processes):
            stop_process(proc)
        for proc in self.processes:
            # Reap the ones this process started itself, so no zombie is left behind.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(proc["pid"]), os.WNOHANG)  # type: ignore[call-overload]

    def find(self, name: str) -> dict[str, object] | None:
        """The recorded process named `name` (the newest, if it was restarted), or None."""
        return next((p for p in reversed(self.processes) if p["name"] == name), None)


def stop_process(proc: dict[str, object], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM one recorded process group, SIGKILL it after `timeout` seconds; return once it is gone."""
    pid, exe = int(proc["pid"]), str(proc["exe"])  # type: ignore[call-overload]
    if not pid_alive(pid, exe):
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid, exe) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid, exe):
        os.killpg(pid, signal.SIGKILL)
        while pid_alive(pid, exe):
            time.sleep(0.05)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(proc: dict[str, object]) -> bool:
    """Whether a recorded process (State.processes) still runs."""
    return pid_alive(int(proc["pid"]), str(proc["exe"]))  # type: ignore[call-overload]


def pid_alive(pid: int, exe: str) -> bool:
    """True when `pid` runs and is still our binary (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        status = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return cmdline == exe and not status.startswith("Z")
