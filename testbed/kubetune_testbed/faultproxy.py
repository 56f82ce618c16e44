"""A TCP proxy in front of MinIO that fails on command: outages, slowness, 5xx replies, dropped connections.

The fault-injection suite (kubetune_testbed.chaos) points the jobs' S3 Secret
(AWS_ENDPOINT_URL) at this proxy instead of at MinIO, and switches its mode
while the trainers stage models and stream checkpoints:

    pass      bytes flow both ways untouched
    outage    every open connection is reset and every new one is reset at once
    slow      every chunk waits `latency` seconds and the throughput is capped at `bandwidth` bytes/s
    error     a `ratio` of the requests is answered `503 SlowDown` (S3's XML error) instead of forwarded
    drop      a `ratio` of the requests loses its connection part-way through the reply

It works on the TCP stream and spots where an HTTP/1.1 request starts (a
method at the start of a chunk from the client), which is enough for what
boto3 sends; it never reads or logs the requests' headers (they carry the
access key's id). Threads, one pair per connection: the traffic is a few test
jobs'.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

MODES = ("pass", "outage", "slow", "error", "drop")
_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ")
_CHUNK = 64 * 1024
_SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
              b"<Message>Please reduce your request rate.</Message></Error>")
_SLOW_DOWN_REPLY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                    b"Content-Length: " + str(len(_SLOW_DOWN)).encode() + b"\r\nConnection: close\r\n\r\n" + _SLOW_DOWN)


@dataclass
class ProxyStats:
    """What the proxy did so far."""

    connections: int = 0
    reset: int = 0  # connections reset by an outage
    errors: int = 0  # requests answered 503
    dropped: int = 0  # connections cut part-way
    delayed: int = 0  # chunks held back by slowness


@dataclass
class _Mode:
    name: str = "pass"
    ratio: float = 0.0
    latency: float = 0.0
    bandwidth: float = 0.0  # bytes per second; 0: no cap
    since: float = field(default_factory=time.monotonic)


def _receive(src: socket.socket, dst: socket.socket) -> bytes:
    """The next bytes from `src`; at its end (or error), b"" after passing the end on to `dst`."""
    try:
        data = src.recv(_CHUNK)
    except OSError:
        data = b""
    if not data:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
    return data


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST, as a crashed server's kernel does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """Listens on `host` (a free port unless given) and forwards to `upstream`."""

    def __init__(self, host: str, upstream: tuple[str, int], port: int = 0, seed: int = 0) -> None:
        self.upstream = upstream
        self._listener = socket.create_server((host, port), backlog=128, reuse_port=False)
        self.host, self.port = host, self._listener.getsockname()[1]
        self._mode = _Mode()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._rng = random.Random(seed)
        self._stopping = threading.Event()
        self.stats = ProxyStats()
        self._thread = threading.Thread(target=self._accept, name="faultproxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode.name

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def set_mode(self, name: str, ratio: float = 0.5, latency: float = 0.5, bandwidth: float = 256 * 1024) -> None:
        """Switch to mode `name` (MODES); an outage resets every connection that is open now."""
        if name not in MODES:
            raise ValueError(f"unknown proxy mode {name!r}; one of {', '.join(MODES)}")
        with self._lock:
            self._mode = _Mode(name, ratio, latency, bandwidth)
            victims = list(self._open) if name == "outage" else []
        for sock in victims:
            self.stats.reset += 1
            _reset(sock)

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            victims = list(self._open)
        for sock in victims:
            _reset(sock)

    # ------------------------------------------------------------ the connections
    def _chance(self, ratio: float) -> bool:
        with self._lock:
            return self._rng.random() < ratio

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.stats.connections += 1
            if self._mode.name == "outage":
                self.stats.reset += 1
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), name="faultproxy-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _reset(client)
            return
        server.settimeout(None)
        with self._lock:
            self._open.update((client, server))
        cut = threading.Event()  # set when a request of this connection is to be dropped part-way
        reply = threading.Thread(target=self._pump, args=(server, client, cut), name="faultproxy-reply", daemon=True)
        reply.start()
        try:
            self._pump_requests(client, server, cut)
        finally:
            reply.join()
            with self._lock:
                self._open.difference_update((client, server))
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.close()

    def _pump_requests(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        """Client to MinIO, deciding at each request's start whether it fails."""
        while data := _receive(client, server):
            mode = self._mode
            if data.startswith(_METHODS):
                if mode.name == "error" and self._chance(mode.ratio):
                    self.stats.errors += 1
                    with contextlib.suppress(OSError):
                        client.sendall(_SLOW_DOWN_REPLY)
                    _reset(server)
                    with contextlib.suppress(OSError):
                        client.shutdown(socket.SHUT_RDWR)
                    return
                if mode.name == "drop" and self._chance(mode.ratio):
                    cut.set()
            if not self._forward(server, data, mode):
                _reset(client)
                return

    def _pump(self, src: socket.socket, dst: socket.socket, cut: threading.Event) -> None:
        """MinIO to the client; a request marked to drop loses the connection after part of its reply."""
        budget = -1
        while data := _receive(src, dst):
            if cut.is_set() and budget < 0:
                with self._lock:
                    budget = self._rng.randrange(0, 4096)
            if budget >= 0 and len(data) > budget:
                self.stats.dropped += 1
                with contextlib.suppress(OSError):
                    dst.sendall(data[:budget])
                _reset(dst)
                _reset(src)
                return
            if budget >= 0:
                budget -= len(data)
            if not self._forward(dst, data, self._mode):
                _reset(src)
                return

    def _forward(self, dst: socket.socket, data: bytes, mode: _Mode) -> bool:
        if mode.name == "slow":
            self.stats.delayed += 1
            time.sleep(mode.latency + (len(data) / mode.bandwidth if mode.bandwidth else 0.0))
        try:
            dst.sendall(data)
        except OSError:
            return False
        return True
