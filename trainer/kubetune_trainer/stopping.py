"""A graceful stop: SIGTERM ends training at a step boundary with a committed checkpoint.

Kubernetes sends SIGTERM when a worker is stopped on purpose (a suspended job,
a drained node, a pre-empted pod, a deleted worker) and SIGKILL once the pod's
terminationGracePeriodSeconds are over. A rank that gets SIGTERM finishes the
optimizer step it is in; the next step's loss all-reduce carries its vote, so
every rank (also those that got no signal) stops after the same step, saves it,
and waits until it is committed. The trainer then exits with EXIT_STOPPED and a
termination message such as `Stopped at step 120 by SIGTERM: checkpoint
step-00000120 committed`. If the grace runs out first, the last committed
checkpoint stands: a half-uploaded one is never committed, so never used.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from kubetune_api.constants import STOPPED_MESSAGE_PREFIX
from kubetune_trainer.errors import TrainerError

EXIT_STOPPED = 4
# Termination messages begin with STOPPED_MESSAGE_PREFIX: the operator counts such an exit as infrastructure.
__all__ = ["EXIT_STOPPED", "STOPPED_MESSAGE_PREFIX", "StopSignal", "Stopped"]


class Stopped(TrainerError):
    """Training stopped on SIGTERM after committing its checkpoint."""

    exit_code = EXIT_STOPPED


class StopSignal:
    """Remembers a SIGTERM (or SIGINT) instead of dying of it; `requested` is polled by the loop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name = ""

    def install(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()
