"""Every pod's /etc/hosts, kept in step with the addresses of the pods of its subdomain.

There is no DNS server on the local cluster: a headless Service's names
(`<hostname>.<subdomain>.<namespace>.svc`), which torchrun's rendezvous uses,
resolve through each pod's /etc/hosts instead. When a pod gets or loses its
address, the hosts file of every pod of its subdomain is rewritten.
"""

from __future__ import annotations

import threading
from pathlib import Path

from . import podspec
from .podspec import HostEntry


class HostsFiles:
    """The node's pods by uid: each pod's names and address, and the hosts file it sees."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, tuple[HostEntry, Path]] = {}

    def register(self, uid: str, entry: HostEntry, path: Path) -> None:
        """The pod has its address: write its hosts file at `path` and add it to its peers'."""
        with self._lock:
            self._pods[uid] = (entry, path)
            self._write(entry)

    def unregister(self, uid: str) -> None:
        """The pod lost its address: drop it from its peers' hosts files."""
        with self._lock:
            gone = self._pods.pop(uid, None)
            if gone is not None:
                self._write(gone[0])

    def _write(self, changed: HostEntry) -> None:
        """Rewrite /etc/hosts of every pod that sees `changed` (its subdomain's pods; the pod itself)."""
        group = [(e, p) for e, p in self._pods.values()
                 if (e.namespace, e.subdomain) == (changed.namespace, changed.subdomain)]
        for entry, path in group:
            if entry.subdomain or entry == changed:
                text = podspec.hosts_file(entry, [e for e, _ in group if e != entry]).encode()
                # In place, never replaced: the pod's bind mount holds on to this inode.
                with open(path, "ab+") as f:
                    f.seek(0)
                    if f.read() != text:
                        f.seek(0)
                        f.truncate()
                        f.write(text)
