"""A container's startup, liveness and readiness probes, run as a kubelet's prober runs them.

From the node (the agent's network namespace) against the pod's address:
`httpGet` (success: a status from 200 to 399) and `tcpSocket` (success: the
connection opens), after initialDelaySeconds, every periodSeconds, each with
timeoutSeconds, flipping after successThreshold successes or
failureThreshold failures in a row. Until the startup probe succeeds the
others do not run. The results mean what they mean to a kubelet:

- readiness: the container is ready (and so the pod, when all are) only
  while it passes; it starts out not ready.
- liveness and startup: once failed, the container is killed and restarted
  as the pod's restartPolicy says.

`exec` and `grpc` probes are not run by the node agent: a container that has
one does not start, and says so (never a probe silently skipped).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubetune_api import Manifest

from .podspec import Unsupported

KINDS = ("startupProbe", "livenessProbe", "readinessProbe")


@dataclass(frozen=True)
class Probe:
    """One probe of a container, parsed: what to ask and how often."""

    kind: str  # startupProbe, livenessProbe or readinessProbe
    action: str  # "http" or "tcp"
    port: int
    path: str = "/"
    scheme: str = "HTTP"
    host: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    @property
    def name(self) -> str:
        return self.kind.removesuffix("Probe").capitalize()  # Startup, Liveness, Readiness (kubelet's words)


def _port(container: Manifest, port: object, kind: str) -> int:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports") or ():
        if p.get("name") == port:
            return int(p["containerPort"])
    raise Unsupported(f"container {container['name']}: {kind} names port {port!r}, which the container does not declare")


def parse_probes(container: Manifest) -> list[Probe]:
    """The container's probes; Unsupported for a kind of probe the node agent does not run."""
    probes = []
    for kind in KINDS:
        spec = container.get(kind)
        if not spec:
            continue
        timing: dict[str, Any] = {"initial_delay": float(spec.get("initialDelaySeconds", 0)), "period": float(spec.get("periodSeconds", 10)),
                  "timeout": float(spec.get("timeoutSeconds", 1)), "success_threshold": int(spec.get("successThreshold", 1)),
                  "failure_threshold": int(spec.get("failureThreshold", 3))}
        if "httpGet" in spec:
            get = spec["httpGet"]
            probes.append(Probe(kind, "http", _port(container, get["port"], kind), path=get.get("path") or "/",
                                scheme=get.get("scheme") or "HTTP", host=get.get("host") or "",
                                headers=tuple((h["name"], h["value"]) for h in get.get("httpHeaders") or ()),
                                **timing))
        elif "tcpSocket" in spec:
            probes.append(Probe(kind, "tcp", _port(container, spec["tcpSocket"]["port"], kind),
                                host=spec["tcpSocket"].get("host") or "", **timing))
        else:
            handlers = sorted(k for k in spec if k in ("exec", "grpc"))
            raise Unsupported(f"container {container['name']}: {kind} with {', '.join(handlers) or 'no handler'} is not "
                              "run by the node agent (httpGet and tcpSocket are)")
    return probes


def check(probe: Probe, pod_ip: str) -> str | None:
    """Run the probe once: None when it passes, else why it failed (as a kubelet's Unhealthy event says)."""
    host = probe.host or pod_ip
    try:
        if probe.action == "tcp":
            with socket.create_connection((host, probe.port), timeout=probe.timeout):
                return None
        if probe.scheme.upper() == "HTTPS":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, probe.port, timeout=probe.timeout, context=ssl._create_unverified_context())
        else:
            conn = http.client.HTTPConnection(host, probe.port, timeout=probe.timeout)
        try:
            conn.request("GET", probe.path, headers={"User-Agent": "kube-probe/node-agent", **dict(probe.headers)})
            response = conn.getresponse()
            body = response.read(1024).decode(errors="replace").strip()
        finally:
            conn.close()
        if 200 <= response.status < 400:
            return None
        return f"HTTP probe failed with statuscode: {response.status}" + (f" ({body})" if body else "")
    except (OSError, http.client.HTTPException) as e:
        target = f"{probe.scheme.lower()}://{host}:{probe.port}{probe.path}" if probe.action == "http" else f"{host}:{probe.port}"
        return f"Get {target}: {e}" if probe.action == "http" else f"dial tcp {target}: {e}"


class Prober(threading.Thread):
    """One probe of one run of a container, in a thread.

    `state` is its result as a kubelet keeps it: True (passing), False (failed), None
    (a startup probe not decided yet); it flips only after successThreshold passes or
    failureThreshold failures in a row."""

    def __init__(self, probe: Probe, pod_ip: str, may_run: Callable[[], bool],
                 failed: Callable[[Probe, str], None], changed: Callable[[], None]) -> None:
        super().__init__(name=f"probe-{probe.kind}", daemon=True)
        self.probe, self.pod_ip = probe, pod_ip
        self.may_run = may_run  # False while a startup probe has not passed
        self.failed, self.changed = failed, changed
        initial = {"livenessProbe": True, "readinessProbe": False, "startupProbe": None}
        self.state: bool | None = initial[probe.kind]
        self.last: bool | None = None
        self.run_length = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        if self.stopped.wait(self.probe.initial_delay):
            return
        while not self.stopped.is_set():
            started = time.monotonic()
            if self.may_run():
                self.record(check(self.probe, self.pod_ip))
                if self.probe.kind == "startupProbe" and self.state is not None:
                    return  # a startup probe is done once it passed (or failed the container)
            self.stopped.wait(max(0.0, self.probe.period - (time.monotonic() - started)))

    def record(self, failure: str | None) -> None:
        if self.stopped.is_set():
            return
        result = failure is None
        if failure is not None:
            self.failed(self.probe, failure)
        self.run_length = self.run_length + 1 if result == self.last else 1
        self.last = result
        threshold = self.probe.success_threshold if result else self.probe.failure_threshold
        if self.run_length >= threshold and self.state != result:
            self.state = result
            self.changed()

    def stop(self) -> None:
        self.stopped.set()


class ContainerProbes:
    """Every probe of one run of a container: whether it has started, is ready, or must be killed."""

    def __init__(self, probes: list[Probe], pod_ip: str, failed: Callable[[Probe, str], None],
                 changed: Callable[[], None]) -> None:
        self.by_kind = {p.kind: Prober(p, pod_ip, self._may_run(p.kind), failed, changed) for p in probes}

    def _may_run(self, kind: str) -> Callable[[], bool]:
        return (lambda: True) if kind == "startupProbe" else (lambda: self.started)

    def start(self) -> None:
        for prober in self.by_kind.values():
            prober.start()

    def stop(self) -> None:
        for prober in self.by_kind.values():
            prober.stop()

    @property
    def started(self) -> bool:
        startup = self.by_kind.get("startupProbe")
        return startup is None or startup.state is True

    @property
    def ready(self) -> bool:
        readiness = self.by_kind.get("readinessProbe")
        return self.started and (readiness is None or readiness.state is True)

    @property
    def kill_reason(self) -> str | None:
        """Why the container must be killed and restarted: a failed liveness or startup probe; else None."""
        for kind in ("startupProbe", "livenessProbe"):
            prober = self.by_kind.get(kind)
            if prober is not None and prober.state is False:
                return f"Container failed {prober.probe.name.lower()} probe, will be restarted"
        return None
