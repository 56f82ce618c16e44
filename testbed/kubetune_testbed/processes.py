"""The training processes the node agent runs for a job's pods, found in /proc: for tests that
freeze or kill one rank as a hung or crashed process would be."""

from __future__ import annotations

from pathlib import Path


def _environ(pid: str) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or not ours to read
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def trainer_pids(namespace: str, job: str) -> dict[int, int]:
    """Global rank -> pid of each training process of the FineTuneJob `namespace/job` on this machine
    (torchrun's workers: the processes with the job's KUBETUNE_* variables and a RANK)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        env = _environ(entry.name)
        if env.get("KUBETUNE_NAMESPACE") == namespace and env.get("KUBETUNE_JOB_NAME") == job and "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found
