"""Work that goes on beside training: a daemon thread whose failure surfaces on the training thread.

Three things run this way (the checkpoint uploader and committer in
streaming.py, the status reporter in progress.py). Each subclass writes its
loop in `_run`, waits on the shared condition, and checks `stopping`; the
first exception it raises is kept and re-raised on the training thread by
`raise_if_failed` or `_wait_until`, so a failure is reported where the run can
act on it instead of dying silently in a thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kubetune_trainer.errors import StorageUnavailable, TrainerError


class Cancelled(Exception):
    """The work was abandoned because its owner is shutting down."""


class BackgroundWorker:
    """A daemon thread with a stop flag, a condition to wait on, and its first failure kept."""

    name = "worker"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"kubetune-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def stopping(self) -> bool:
        """close() was called: finish or abandon the work, as the subclass's contract says."""
        return self._stop.is_set()

    def _main(self) -> None:
        try:
            self._run()
        except Cancelled:
            pass
        except BaseException as e:  # kept for the training thread, which reports it
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def _run(self) -> None:
        raise NotImplementedError

    def _wait_until(self, done: Callable[[], bool], timeout: float | None, timeout_message: str) -> None:
        """Wait (woken by the condition) until done() holds or the thread failed, then re-raise its
        failure; StorageUnavailable(timeout_message.format(timeout)) after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._error is None and not done():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise StorageUnavailable(timeout_message.format(timeout))
                self._cond.wait(remaining if remaining is not None else 1.0)
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self._error is not None:
            error = self._error
            if isinstance(error, TrainerError):
                raise type(error)(str(error))
            raise RuntimeError(f"{self.name} failed: {type(error).__name__}: {error}") from error

    def close(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait up to `timeout` seconds for it."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
