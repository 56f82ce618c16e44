"""The operator's probe endpoints, /healthz (liveness) and /readyz (readiness), from the first second.

Why its own server and not kopf's liveness endpoint: kopf runs only in the
replica that holds the Lease, but a standby must answer its probes too: the
Deployment counts it available only when it is Ready (and `helm install
--wait` waits for that), and the kubelet restarts it when it stops answering.
What each path checks is given by the process (`__main__`): a function that
returns None when all is well, or one line saying what is wrong; the answer is
200 "ok" or 503 with that line.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

Check = Callable[[], "str | None"]


class HealthEndpoint:
    """/healthz and /readyz on one port of every address, served by a daemon thread."""

    def __init__(self, port: int, live: Check, ready: Check) -> None:
        self.checks: dict[str, Check] = {"/healthz": live, "/readyz": ready}
        checks = self.checks

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the http.server API names it
                check = checks.get(self.path.split("?", 1)[0])
                if check is None:
                    self._answer(404, "not found: /healthz or /readyz")
                    return
                try:
                    problem = check()
                except Exception as e:  # a check that fails is an answer, not a crash
                    problem = f"{type(e).__name__}: {e}"
                self._answer(200 if problem is None else 503, problem or "ok")

            def _answer(self, code: int, text: str) -> None:
                body = (text + "\n").encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: no log
                pass

        self.server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        self.server.daemon_threads = True

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="kubetune-health", daemon=True).start()
