"""The node agent's kubelet endpoint, just enough of it for `kubectl logs`.

`kubectl logs` asks the API server, which proxies to the node's kubelet
endpoint (the Node's InternalIP and status.daemonEndpoints.kubeletEndpoint.Port):
`GET /containerLogs/<namespace>/<pod>/<container>` with `follow`, `tailLines`,
`limitBytes` and `previous`. This serves those from the log files the agent
keeps, over TLS with the cluster CA, and answers only clients whose
certificate that CA signed (the API server's kubelet-client certificate).
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# (namespace, pod, container, previous) -> (log file, still being written) or None
LogLookup = Callable[[str, str, str, bool], "tuple[Path, bool] | None"]
FOLLOW_POLL_SECONDS = 0.2


def tail(data: bytes, lines: int) -> bytes:
    if lines < 0:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


class LogServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, pki: Path, cert_stem: str, lookup: LogLookup) -> None:
        super().__init__((address, 0), _Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki / f"{cert_stem}.crt", pki / f"{cert_stem}.key")
        ctx.load_verify_locations(pki / "ca.crt")
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.lookup = lookup

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="log-server", daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    server: LogServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # the API server logs its requests already

    def do_GET(self) -> None:
        # A client that goes away (`kubectl logs -f` stopped with ^C) is no error.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._serve()

    def _serve(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._error(HTTPStatus.NOT_FOUND, f"{url.path}: the node agent serves only /containerLogs")
            return
        _, namespace, pod, container = parts
        query = urllib.parse.parse_qs(url.query)

        def flag(name: str) -> bool:
            return query.get(name, ["false"])[0].lower() in ("true", "1")

        found = self.server.lookup(namespace, pod, container, flag("previous"))
        if found is None:
            what = "previous terminated container" if flag("previous") else "container"
            self._error(HTTPStatus.BAD_REQUEST, f'{what} "{container}" in pod "{pod}" has not run (yet)')
            return
        path, live = found
        content = path.read_bytes()
        data = tail(content, int(query.get("tailLines", ["-1"])[0]))
        limit = int(query.get("limitBytes", ["0"])[0]) or None
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = self._chunk(data[:limit])
        if flag("follow") and live:
            offset = len(content)  # not the size now: what was written since must still be sent
            while limit is None or sent < limit:
                size = path.stat().st_size
                if size > offset:
                    with open(path, "rb") as f:
                        f.seek(offset)
                        more = f.read(size - offset)
                    offset = size
                    sent += self._chunk(more[: None if limit is None else limit - sent])
                    continue
                still = self.server.lookup(namespace, pod, container, False)
                if still is None or still[0] != path or not still[1]:
                    if path.exists() and path.stat().st_size > offset:
                        continue  # the last words of a process that just ended
                    break
                time.sleep(FOLLOW_POLL_SECONDS)
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> int:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        return len(data)

    def _error(self, status: HTTPStatus, message: str) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
