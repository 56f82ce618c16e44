"""The hang watchdog: a rank that stops making progress says where it is stuck, then exits.

A collective that never returns (a peer frozen or gone without closing its
sockets), a read from a dead file system, a deadlock: none of them ends the
process, and the job would hold its GPUs forever. Every rank arms a watchdog:

- from the start of the process until its first optimizer step, the startup
  deadline (spec.runPolicy.startupDeadlineSeconds: staging, rendezvous, model
  load and the first step);
- then the progress deadline (spec.runPolicy.progressDeadlineSeconds), re-armed
  by every optimizer step, evaluation and checkpoint.

When a deadline passes, the watchdog thread (which runs while the training
thread waits in C code) writes a report (the step, the phase, the time since
the last progress, the collective the training thread waits in, and the
Python stack of every thread) to the log and to
`diagnostics/attempt-N/rank-R.txt` under the checkpoint URI, writes
`Hang: no step for 600 s at step 1234 (...)` to the termination log, and ends
the process at once with EXIT_HANG. The operator reads that message and
restarts the gang for a hang (runPolicy.hangRestartLimit), not a failure.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType

from kubetune_api.constants import HANG_MESSAGE_PREFIX
from kubetune_trainer.callbacks import Callback, StepMetrics
from kubetune_trainer.errors import EXIT_HANG
from kubetune_trainer.logs import log_event
from kubetune_trainer.metrics import Evaluation

# Modules whose functions are collectives (or wait for one): the innermost such frame of the
# training thread names what it waits in.
_COLLECTIVE_MODULES = ("torch/distributed/", "deepspeed/comm/")
# How long the report may take to reach storage (which may itself be what hangs).
UPLOAD_SECONDS = 60.0


def diagnostics_key(attempt: int, rank: int) -> str:
    """Where a rank's hang report goes, relative to the checkpoint URI."""
    return f"diagnostics/attempt-{attempt}/rank-{rank}.txt"


def waiting_in(frame: FrameType | None) -> str | None:
    """The innermost torch.distributed or deepspeed.comm function on the stack of `frame`, as
    'module.function', or None."""
    found = None
    while frame is not None:
        path = frame.f_code.co_filename.replace(os.sep, "/")
        for marker in _COLLECTIVE_MODULES:
            if found is None and marker in path:
                module = path[path.rindex(marker):].removesuffix(".py").replace("/", ".")
                found = f"{module}.{frame.f_code.co_name}"
        frame = frame.f_back
    return found


def thread_stacks(frames: dict[int, FrameType] | None = None) -> str:
    """The Python stack of every thread, innermost call last, as faulthandler prints them."""
    frames = sys._current_frames() if frames is None else frames
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in frames.items():
        out.append(f"Thread {names.get(ident, '?')} ({ident}):\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(out)


class Watchdog(Callback):
    """Arms a deadline, re-armed by progress; when it passes, `report` then `exit` (see module doc).

    `report(key, text)` stores the report (it is given at most UPLOAD_SECONDS); `terminate(line)`
    writes the termination message; `exit(code)` ends the process (os._exit in production).
    """

    def __init__(self, *, startup_seconds: float, progress_seconds: float, rank: int, attempt: int,
                 report: Callable[[str, str], None], terminate: Callable[[str], None],
                 exit: Callable[[int], None] = os._exit, clock: Callable[[], float] = time.monotonic,
                 where: str = "") -> None:
        self.startup_seconds, self.progress_seconds = startup_seconds, progress_seconds
        self.rank, self.attempt = rank, attempt
        self._report, self._terminate, self._exit, self._clock = report, terminate, exit, clock
        self.where = where  # the checkpoint URI, for messages
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._armed_at = clock()
        self._limit: float | None = startup_seconds
        self.phase = "startup"  # what the deadline covers, for the report
        self.step = 0
        self._training_thread = threading.main_thread().ident
        self._thread = threading.Thread(target=self._watch, name="kubetune-watchdog", daemon=True)
        self.fired = threading.Event()

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    # -- progress --------------------------------------------------------------------------

    def arm(self, phase: str, seconds: float | None) -> None:
        """From now, `seconds` until the next progress (None: disarmed)."""
        with self._lock:
            self.phase, self._limit, self._armed_at = phase, seconds, self._clock()
        self._wake.set()

    def disarm(self) -> None:
        self.arm("done", None)

    def on_train_start(self, start_step: int, total_steps: int) -> None:
        self.step = start_step  # the first step still counts as start-up

    def on_step_end(self, metrics: StepMetrics) -> None:
        self.step = metrics.step
        self.arm("training", self.progress_seconds)

    def on_eval_end(self, evaluation: Evaluation, best: tuple[int, float] | None) -> None:
        if self.phase != "startup":
            self.arm("training", self.progress_seconds)

    def on_checkpoint_saved(self, step: int, path: object, seconds: float = 0.0, **_: object) -> None:
        if self.phase != "startup":
            self.arm("training", self.progress_seconds)

    # -- firing ----------------------------------------------------------------------------

    def _watch(self) -> None:
        while True:
            with self._lock:
                limit, since = self._limit, self._armed_at
            if limit is None:
                self._wake.wait()
                self._wake.clear()
                continue
            remaining = since + limit - self._clock()
            if remaining > 0:
                self._wake.wait(min(remaining, 5.0))
                self._wake.clear()
                continue
            self.fire(self._clock() - since)
            return

    def message(self, idle: float, collective: str | None) -> str:
        what = "no step" if self.phase == "training" else f"{self.phase} not done"
        waiting = f", waiting in {collective}" if collective else ""
        return (f"{HANG_MESSAGE_PREFIX} {what} for {idle:.0f} s at step {self.step} "
                f"(rank {self.rank}{waiting}); stacks in {self.where}{diagnostics_key(self.attempt, self.rank)}")

    def fire(self, idle: float) -> None:
        """Report and end the process (called on the watchdog thread)."""
        self.fired.set()
        frames = sys._current_frames()
        collective = waiting_in(frames.get(self._training_thread)) if self._training_thread else None
        line = self.message(idle, collective)
        limit_name = "progressDeadlineSeconds" if self.phase == "training" else "startupDeadlineSeconds"
        text = (f"{line}\n\nphase: {self.phase}\nstep: {self.step}\nrank: {self.rank}\nattempt: {self.attempt}\n"
                f"seconds since last progress: {idle:.1f} (spec.runPolicy.{limit_name})\n"
                f"waiting in: {collective or 'no collective (see the stacks)'}\npid: {os.getpid()}\n\n"
                + thread_stacks(frames))
        log_event("hang", rank=self.rank, step=self.step, phase=self.phase, idle_seconds=round(idle, 1),
                  waiting_in=collective, diagnostics=diagnostics_key(self.attempt, self.rank))
        print(text, file=sys.stderr, flush=True)
        uploader = threading.Thread(target=self._store, args=(text,), name="kubetune-hang-report", daemon=True)
        uploader.start()
        uploader.join(UPLOAD_SECONDS)
        self._terminate(line)
        sys.stdout.flush()
        sys.stderr.flush()
        self._exit(EXIT_HANG)

    def _store(self, text: str) -> None:
        try:
            self._report(diagnostics_key(self.attempt, self.rank), text)
        except Exception as e:  # the report is in the log either way
            print(f"kubetune-trainer: could not store the hang report: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)


class Stall(Callback):
    """Fault injection (Settings.stall_at_step): block the training loop for good after `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, metrics: StepMetrics) -> None:
        if metrics.step == self.step:
            log_event("test_stall", step=metrics.step)
            threading.Event().wait()
