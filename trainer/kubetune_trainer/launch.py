"""`python -m kubetune_trainer.launch torchrun ARGS...`: a worker pod's first process.

Kubernetes stops a container by sending SIGTERM to its first process and
SIGKILL to all of it once terminationGracePeriodSeconds are over. torchrun,
given SIGTERM, passes it to the training processes but kills them 30 s later,
whatever the grace period. So the pod starts this launcher instead: it runs
torchrun, and on SIGTERM (or SIGINT) signals only the training processes
(torchrun's children), which finish their step, commit a checkpoint and exit
(stopping.py); torchrun then ends as it would after any exit of its workers,
and the launcher exits with torchrun's code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m kubetune_trainer.launch torchrun ARGS...", file=sys.stderr)
        return 2
    launcher = subprocess.Popen(args)

    def forward(signum: int, _frame: FrameType | None) -> None:
        for pid in children(launcher.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = launcher.wait()
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


if __name__ == "__main__":
    sys.exit(main())
