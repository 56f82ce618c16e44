"""Free TCP ports on loopback: every component of the local cluster, and every process a test
starts beside it (the operator's metrics and health endpoints), listens on one of its own, so
two clusters or test sessions on one machine never collide."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
