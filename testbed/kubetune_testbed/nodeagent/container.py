"""One container of a pod as a local process: what a container runtime does for the node agent.

A ContainerRun starts its container through podinit.py (which builds the
container's view and execs the command), knows when the command really runs,
turns an exit into the `terminated` state a kubelet reports (exit code,
reason, termination message), keeps each run's log and holds the run's
probes (probes.py), from which it is started and ready. Restart decisions,
back-off and the pod around it are the PodRunner's.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_api import Manifest, format_timestamp, utc_now

from .probes import ContainerProbes

PODINIT = Path(__file__).with_name("podinit.py")
TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048


def now_rfc3339() -> str:
    """Now, as a kubelet writes the times of a pod's status."""
    return format_timestamp(utc_now())


def container_state(kind: str, **fields: Any) -> Manifest:
    """A containerStatuses[].state; strategic merge patches merge maps, so the other states are nulled."""
    return {"waiting": None, "running": None, "terminated": None, kind: fields}


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def signal_main(pid: int, sig: int) -> None:
    """Signal a container's first process only, as the container runtime's stop does with SIGTERM
    (its children hear of it from it, or not at all); SIGKILL goes to the whole group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


@dataclass
class ContainerRun:
    """One container of a pod, its runs so far and its current process."""

    spec: Manifest
    init: bool
    pod_dir: Path
    runs: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    state: Manifest = field(default_factory=lambda: container_state("waiting", reason="ContainerCreating"))
    last_state: Manifest = field(default_factory=dict)
    exit_code: int | None = None  # of the last run, once it ended
    next_start: float = 0.0  # monotonic time of the next (re)start; inf: it will not run again
    started_mono: float = 0.0  # monotonic time the current (or last) run started
    crashes: int = 0  # exits in a row that were followed by a back-off (reset after a long run)
    start_failures: int = 0  # attempts in a row that could not start the container at all
    probes: ContainerProbes | None = None  # of the current run
    kill_deadline: float | None = None  # a liveness kill is under way: SIGKILL at this monotonic time

    @property
    def restarts(self) -> int:
        return max(self.runs - 1, 0)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.proc is not None

    @property
    def started(self) -> bool:
        """Running, and past its startup probe (if any)."""
        return self.running and (self.probes is None or self.probes.started)

    @property
    def ready(self) -> bool:
        """Running, started and passing its readiness probe (if any); an init container is never ready."""
        return self.running and not self.init and (self.probes is None or self.probes.ready)

    @property
    def done(self) -> bool:
        return self.proc is None and self.next_start == float("inf")

    @property
    def container_id(self) -> str:
        return f"nodeagent://{self.pod_dir.name}/{self.name}/{self.runs}"

    def log_path(self, run: int) -> Path:
        return self.pod_dir / "logs" / self.name / f"{run}.log"

    def _file(self, kind: str) -> Path:
        return self.pod_dir / kind / f"{self.name}-{self.runs}"

    @property
    def termination_file(self) -> Path:
        """The file bind-mounted at the container's terminationMessagePath for the current run."""
        return self._file("termination")

    def start(self, argv: list[str], env: dict[str, str], netns: str | None, hostname: str,
              mounts: list[Manifest], keep: list[str]) -> None:
        """Start the next run with `mounts` (and its termination-message file) in its view, and `keep`
        (the project's environment: the programs the container runs) visible even under a mount.

        Returns once the command runs, or once podinit gave up (which `exited` then reports)."""
        self.runs += 1
        self.termination_file.parent.mkdir(parents=True, exist_ok=True)
        self.termination_file.write_bytes(b"")
        self.log_path(self.runs).parent.mkdir(parents=True, exist_ok=True)
        termination = self.spec.get("terminationMessagePath") or "/dev/termination-log"
        mounts = [*mounts, {"source": str(self.termination_file), "target": termination, "readOnly": False}]
        # Parents before children (sorted() is stable).
        mounts.sort(key=lambda m: len(Path(m["target"]).parts))
        exec_read, exec_write = os.pipe()
        spec = {"netns": netns, "hostname": hostname, "mounts": mounts, "keep": keep, "argv": argv,
                "workingDir": self.spec.get("workingDir") or "/", "podDir": str(self.pod_dir),
                "startErrorFile": str(self._file("start").with_suffix(".error").relative_to(self.pod_dir)),
                "terminationMessageFile": str(self.termination_file.relative_to(self.pod_dir)),
                "execFd": exec_write}
        spec_file = self._file("start").with_suffix(".json")
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(json.dumps(spec, indent=1))
        with open(self.log_path(self.runs), "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", str(PODINIT), str(spec_file)], env=env, cwd="/",
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, pass_fds=(exec_write,),
                start_new_session=True,  # its own process group, signalled as one
            )
        os.close(exec_write)
        # Running means the command runs: the pipe closes when podinit execs it (or exits).
        with os.fdopen(exec_read, "rb") as exec_pipe:
            exec_pipe.read()
        self.started_at = now_rfc3339()
        self.started_mono = time.monotonic()
        self.exit_code = None
        self.start_failures = 0
        self.state = container_state("running", startedAt=self.started_at)

    def exited(self, code: int) -> int:
        """Record the end of the current run (Popen's returncode) as a kubelet reports it; the exit code."""
        self.proc = None
        self.kill_deadline = None
        if self.probes is not None:
            self.probes.stop()
            self.probes = None
        exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128+N, as a runtime reports it
        self.exit_code = exit_code
        start_error = self._file("start").with_suffix(".error").exists()
        terminated = {"exitCode": exit_code, "startedAt": self.started_at, "finishedAt": now_rfc3339(),
                      "reason": "StartError" if start_error else ("Completed" if exit_code == 0 else "Error"),
                      "containerID": self.container_id}
        if message := self._termination_message(exit_code):
            terminated["message"] = message
        self.state = container_state("terminated", **terminated)
        return exit_code

    def _termination_message(self, exit_code: int) -> str:
        path = self.termination_file
        message = path.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace") if path.exists() else ""
        if not message.strip() and exit_code != 0 and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            tail = self.log_path(self.runs).read_bytes()[-FALLBACK_LOG_BYTES:].decode(errors="replace")
            message = "\n".join(tail.splitlines()[-FALLBACK_LOG_LINES:])
        return message

    def status(self) -> Manifest:
        """Its entry in the pod's containerStatuses (or initContainerStatuses)."""
        status: Manifest = {"name": self.name, "image": self.spec.get("image", ""), "imageID": "",
                            "ready": self.ready, "started": self.started,
                            "restartCount": self.restarts, "state": self.state, "lastState": self.last_state or {}}
        if self.runs:
            status["containerID"] = self.container_id
        return status
