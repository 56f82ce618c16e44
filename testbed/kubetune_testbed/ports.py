"""Free TCP ports on loopback: every component of the local cluster, and every process a test
starts beside it (the operator's metrics and health endpoints), listens on one of its own, so
two clusters or test sessions on one machine never collide."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port free on every address: the operator's endpoints listen on 0.0.0.0, which a listener on any
    one address (a pod of the node agent on 10.244.0.x) blocks, though loopback has the port free."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])
