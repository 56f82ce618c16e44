"""Storage failures: which ones are final, and retrying the others with backoff.

A store either refuses a request for good (`StorageError`: credentials, a
missing bucket, permissions; retrying will not help) or does not answer
(`StorageUnavailable`: connection refused, timeouts, 5xx, a full disk), which
`retry` keeps trying with exponential backoff until a deadline. Each backend
sorts its own errors into the two (s3.py for botocore's); `classify` here sorts
the ones every backend can meet.
"""

from __future__ import annotations

import errno
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from kubetune_trainer.background import Cancelled
from kubetune_trainer.errors import StorageError, StorageUnavailable

T = TypeVar("T")


def classify(error: BaseException, where: str) -> Exception:
    """An OS (or unknown) error as StorageError (final) or StorageUnavailable (retry)."""
    if isinstance(error, StorageError | StorageUnavailable):
        return error
    if isinstance(error, PermissionError):
        return StorageError(f"{where}: permission denied ({error.strerror}); the pod's user must be "
                            "able to read and write this folder")
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageUnavailable(f"{where}: no space left on the device")
    first_line = (str(error).splitlines() or [""])[0]
    return StorageUnavailable(f"{where}: {type(error).__name__}: {first_line}")


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: about base * 2**attempt, at most `cap` seconds."""
    return min(cap, base * 2**attempt) * random.uniform(0.5, 1.0)


def raise_first_failure(failures: dict[str, Exception]) -> None:
    """Raise a final failure if there is one, else a transient one (which `retry` retries)."""
    for error in failures.values():
        if not isinstance(error, StorageUnavailable):
            raise error
    if failures:
        first = next(iter(failures.values()))
        raise StorageUnavailable(f"{len(failures)} file(s) not transferred, e.g. {first}")


def retry(call: Callable[[], T], *, what: str, give_up_after: float,
          on_retry: Callable[[int, Exception, float], None] | None = None,
          stop: threading.Event | None = None) -> T:
    """`call()` until it succeeds; StorageUnavailable is retried with backoff for `give_up_after`
    seconds, anything else is raised at once."""
    attempt, deadline = 0, None
    while True:
        try:
            return call()
        except StorageUnavailable as e:
            now = time.monotonic()
            deadline = deadline or now + give_up_after
            if now >= deadline:
                raise StorageUnavailable(f"{what}: gave up after {give_up_after:.0f}s of failures; "
                                         f"last: {e}") from None
            delay = min(backoff_delay(attempt), max(0.0, deadline - now))
            if on_retry is not None:
                on_retry(attempt + 1, e, delay)
            if stop is not None and stop.wait(delay):
                raise Cancelled(what) from None
            if stop is None:
                time.sleep(delay)
            attempt += 1
