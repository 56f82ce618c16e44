"""Errors a user can fix, as opposed to bugs.

The entry point prints a `TrainerError` as one line, writes it to the pod's
termination log and exits with `TrainerError.exit_code`, so the operator and the
pod log show what was wrong and what to do instead of a traceback. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

# Exit codes the operator can tell apart: bad input (retrying will not help) and a failure
# that a restart may cure (storage down for too long).
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_HANG = 3  # the watchdog found this process hung (watchdog.py); the termination message says where


class TrainerError(Exception):
    """Bad input to the trainer: the message names what, where, and what to do."""

    # Distinct from 1 (a crash) so that a supervisor can tell "retrying will not help".
    exit_code = EXIT_BAD_INPUT


class ConfigError(TrainerError):
    """The trainer config (or the spec it came from) is invalid."""


class DataError(TrainerError):
    """A dataset file is missing, malformed, empty, or holds a bad record."""


class StorageError(TrainerError):
    """The store refused a request for good: wrong credentials, no such bucket, access denied."""


class StorageUnavailable(TrainerError):
    """The store did not answer (connection refused, timeouts, 5xx) for longer than the trainer waits."""

    exit_code = EXIT_FAILED


class CheckpointError(TrainerError):
    """A checkpoint did not pass its checks (a stored file differs from what its rank uploaded)."""

    exit_code = EXIT_FAILED
