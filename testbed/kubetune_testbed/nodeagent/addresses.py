"""The pods' addresses on the node's pod network: one per pod, from bound until its sandbox is gone.

A kubelet asks its CNI plugin for an address when it builds a pod's sandbox
and gives it back when it removes it; this is that plugin's bookkeeping for the
node agent's one /24. Pod runners run concurrently, hence the lock.
"""

from __future__ import annotations

import threading

from .network import PodNetwork


class AddressPool:
    """Addresses of one pod network, handed out by pod uid."""

    def __init__(self, net: PodNetwork) -> None:
        self.net = net
        self._lock = threading.Lock()
        self._by_uid: dict[str, str] = {}

    def allocate(self, uid: str) -> str:
        """The pod's address: the one it has, else the first free one."""
        with self._lock:
            if uid in self._by_uid:
                return self._by_uid[uid]
            used = set(self._by_uid.values())
            free = next((a for a in self.net.pod_addresses() if a not in used), None)
            if free is None:
                raise RuntimeError(f"no free address left in {self.net.subnet}")
            self._by_uid[uid] = free
            return free

    def release(self, uid: str) -> None:
        with self._lock:
            self._by_uid.pop(uid, None)
