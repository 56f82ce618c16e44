"""The first process of every container the node agent runs: builds its view, then becomes its command.

Started by the agent as `python podinit.py <spec.json>` with the container's
environment, as root, it does what a container runtime does before exec:
enters the pod's network namespace, unshares a mount and a UTS namespace (so
its mounts and hostname are its own), sets the pod's hostname, bind-mounts
the pod's files over the paths the container expects (its /etc/hosts and
the volumes, the termination-message file), changes to the working
directory and execs the command, looked up on the container's PATH. The
filesystem is otherwise the host's: there is no image. What stands in for
the image's own files (the project's environment: its virtual environment,
interpreter and source, the `keep` paths) is bound back where a volume hid
it (an emptyDir on /tmp over a checkout under /tmp): in an image they are
never under a pod's mount.

Standard library only: it runs before anything of the pod exists.
If it cannot start the command, it writes why to the start-error file, the
termination-message file and stderr, and exits with 128 (a kubelet's StartError).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
START_ERROR_EXIT = 128

libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, flags: int) -> None:
    _check(libc.mount(source.encode() if source else None, target.encode(), None, flags, None), f"mount {target}")


def _ensure_mount_point(target: Path, is_dir: bool) -> None:
    """Mount points must exist; missing ones are created (on the host's filesystem, empty)."""
    if target.exists():
        return
    if is_dir:
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()


def enter(spec: dict[str, Any]) -> None:
    if spec.get("netns"):
        fd = os.open(f"/run/netns/{spec['netns']}", os.O_RDONLY)
        _check(libc.setns(fd, CLONE_NEWNET), "setns")
        os.close(fd)
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    # Nothing mounted from here on may propagate back to the host.
    _mount(None, "/", MS_REC | MS_PRIVATE)
    # Hold every source open before the first mount: one may hide
    # where later sources live. Opened only now, in this mount namespace, so they can be bind-mounted.
    sources = [os.open(m["source"], os.O_PATH) for m in spec["mounts"]]
    keep = [(path, os.open(path, os.O_PATH)) for path in spec.get("keep", ()) if os.path.exists(path)]
    hostname = spec["hostname"].encode()
    _check(libc.sethostname(hostname, len(hostname)), "sethostname")
    for m, fd in zip(spec["mounts"], sources, strict=True):  # sorted by the agent: parents before children
        target = Path(m["target"])
        _ensure_mount_point(target, stat.S_ISDIR(os.fstat(fd).st_mode))
        _mount(f"/proc/self/fd/{fd}", str(target), MS_BIND | MS_REC)
        if m.get("readOnly"):
            _mount(None, str(target), MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.close(fd)
    targets = [Path(m["target"]) for m in spec["mounts"]]
    for path, fd in keep:
        if any(Path(path) != t and Path(path).is_relative_to(t) for t in targets):  # hidden by a volume
            _ensure_mount_point(Path(path), stat.S_ISDIR(os.fstat(fd).st_mode))
            _mount(f"/proc/self/fd/{fd}", path, MS_BIND | MS_REC)
        os.close(fd)
    os.chdir(spec["workingDir"])


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    argv = spec["argv"]
    pod_dir = os.open(spec["podDir"], os.O_PATH | os.O_DIRECTORY)  # reachable whatever gets mounted
    # The agent reads this pipe until it closes: on exec (close-on-exec) or on exit, never before.
    os.set_inheritable(spec["execFd"], False)
    try:
        enter(spec)
        program = argv[0]
        if "/" not in program:
            found = shutil.which(program, path=os.environ.get("PATH", os.defpath))
            if found is None:
                raise RuntimeError(f'exec: "{program}": executable file not found in $PATH')
            program = found
        os.execve(program, argv, os.environ)
    except Exception as e:
        message = f"failed to start container: {e}"
        print(message, file=sys.stderr, flush=True)
        for name in (spec["startErrorFile"], spec["terminationMessageFile"]):  # relative to the pod's directory
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=pod_dir)
            os.write(fd, message.encode())
            os.close(fd)
        os._exit(START_ERROR_EXIT)


if __name__ == "__main__":
    main()
