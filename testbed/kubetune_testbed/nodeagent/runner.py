"""One pod on the node agent's node, from bound to deleted: what a kubelet's pod worker does.

A PodRunner is a thread per pod. It builds the pod's sandbox (network
namespace, address, /etc/hosts, TMPDIR), writes its volumes, runs the init
containers one after another and then the containers together, each as a local
process started through podinit.py, runs their probes, restarts them as the
restartPolicy says (with the kubelet's back-off), and reports every change
through the pod's status subresource, with Events for what `kubectl describe
pod` shows (back-off, failed probes, kills, containers that cannot start).

A container that cannot be started (a config reference missing, an image whose
entrypoint is unknown, something the node agent does not do) is retried with
back-off and reported as waiting, as a kubelet does: its pod never turns Failed
for it (a Deployment would replace such a pod at once, again and again). When the pod is
deleted it stops the processes (SIGTERM, the grace period, SIGKILL), removes
the sandbox and the pod's files, and deletes the object with grace 0, as a
kubelet confirms a termination.

It sees its node only through NodeServices, narrow collaborators that the
Agent builds once and shares: the node's identity, the address pool, the
hosts files and the API calls a pod needs. Nothing here knows the Agent.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubetune_api import Manifest

from . import network, podspec
from .addresses import AddressPool
from .container import ContainerRun, container_state, now_rfc3339, signal_group, signal_main
from .hosts import HostsFiles
from .images import ImageUnknown, command_line
from .node import ENVIRONMENT_PATHS, NodeIdentity
from .podapi import PodApi
from .podinit import START_ERROR_EXIT
from .podspec import ConfigError, PodContext, Unsupported
from .probes import ContainerProbes, Probe, parse_probes

log = logging.getLogger("nodeagent")

POLL_SECONDS = 0.2
CONFIG_RETRY_SECONDS = 2.0
# How soon a status update the API server refused is sent again (a kubelet's status manager resyncs every 10 s).
STATUS_RESYNC_SECONDS = 10.0
# The kubelet's crash-loop (and image-pull) back-off: 10 s, doubling, at most 5 min; forgotten
# once a container has run for twice the maximum.
BACKOFF_BASE, BACKOFF_MAX = 10.0, 300.0
BACKOFF_RESET = 2 * BACKOFF_MAX
DEFAULT_GRACE_SECONDS = 30
SHUTDOWN_GRACE_SECONDS = 3  # when the agent itself stops (`make down`)


@dataclass(frozen=True)
class NodeServices:
    """What a pod's runner uses of its node: each a narrow collaborator, shared by all of the node's runners."""

    node: NodeIdentity
    addresses: AddressPool
    hosts: HostsFiles
    api: PodApi
    # Called once the runner is done and the pod deleted: forget the runner, remove its files.
    finished: Callable[[PodRunner], None]


class PodRunner(threading.Thread):
    def __init__(self, services: NodeServices, pod: Manifest) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.services = services
        self.node = services.node
        self.api = services.api
        self.pod = pod
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.dir = services.node.pods_dir / self.uid
        self.wake = threading.Event()
        self.gone = False  # the object no longer exists in the API
        self.shutting_down = False  # the agent stops; the pod object stays
        self.sandbox: str | None = None
        self.ip: str | None = None
        self.phase = "Pending"
        self.reason = self.message = ""
        self.start_time = ""
        self.initialized = not pod["spec"].get("initContainers")
        self.inits = [ContainerRun(c, True, self.dir) for c in pod["spec"].get("initContainers") or ()]
        self.mains = [ContainerRun(c, False, self.dir) for c in pod["spec"]["containers"]]
        self.volume_dirs: dict[str, Path] = {}
        self.reported: Manifest | None = None
        self.transitions: dict[str, tuple[str, str]] = {}

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod_name}"

    # ------------------------------------------------------------ signals from the agent
    def update(self, pod: Manifest) -> None:
        self.pod = pod
        self.wake.set()

    def removed(self) -> None:
        self.gone = True
        self.wake.set()

    def shutdown(self) -> None:
        self.shutting_down = True
        self.wake.set()

    @property
    def deleting(self) -> bool:
        return self.gone or bool(self.pod["metadata"].get("deletionTimestamp"))

    def _should_stop(self) -> bool:
        return self.deleting or self.shutting_down

    def _sleep(self, seconds: float) -> bool:
        """Wait up to `seconds` or until something happens to the pod; True when the runner must stop."""
        self.wake.wait(seconds)
        self.wake.clear()
        return self._should_stop()

    # ------------------------------------------------------------ the lifecycle
    def run(self) -> None:
        try:
            if self.pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                self._live()
        except Unsupported as e:
            self._cannot_run(str(e))
        except Exception as e:
            log.exception("pod %s: node agent error", self.key)
            self._end("Failed", "NodeAgentError", f"{type(e).__name__}: {e}")
        finally:
            self._stop_containers()
            self._remove_sandbox()
        if self.shutting_down:
            return
        if self.deleting and not self.gone and self.phase not in ("Succeeded", "Failed"):
            # A deleted pod's last status before it goes, as a kubelet reports it: terminal, with each
            # container's exit code and termination message.
            self._end("Succeeded" if all(c.exit_code == 0 for c in self.mains) else "Failed")
        while not self.deleting and not self.shutting_down:
            # As a kubelet's status manager does, a status the API server did not take (it was down) is sent
            # again until it does; without that a pod that ended meanwhile would show Running for good.
            self._report()
            self._sleep(STATUS_RESYNC_SECONDS if self.status() != self.reported else 60)
        if self.shutting_down:
            return
        try:
            if not self.gone:
                self.api.confirm_deletion(self.pod)
        except Exception as e:  # the namespace controller or a later event finishes it
            log.warning("pod %s: deleting failed: %s", self.key, e)
        self.services.finished(self)

    def _live(self) -> None:
        """Run the pod until it is terminal or must stop."""
        if self._should_stop():
            return
        if self.pod["spec"].get("hostNetwork"):
            raise Unsupported("hostNetwork pods are not supported by the node agent")
        self._create_sandbox()
        while not self._prepare_volumes():
            if self._sleep(CONFIG_RETRY_SECONDS):
                return
        policy = self.pod["spec"].get("restartPolicy", "Always")
        for init in self.inits:
            outcome = self._run_together([init], policy)
            if outcome is None:
                return
            if outcome != "Succeeded":
                self._end("Failed", "", f"init container {init.name} failed")
                return
        self.initialized = True
        outcome = self._run_together(self.mains, policy)
        if outcome is not None:
            self._end(outcome)

    def _cannot_run(self, message: str) -> None:
        """The pod asks for something the node agent does not do: it stays Pending, saying so, until deleted."""
        log.warning("pod %s cannot run: %s", self.key, message)
        for c in self.inits[:1] or self.mains:
            c.state = container_state("waiting", reason="CreateContainerError", message=message)
        self.api.event(self.pod, "Warning", "Failed", f"Error: {message}")
        self._report()
        while not self._sleep(STATUS_RESYNC_SECONDS if self.status() != self.reported else 60):
            self._report()

    def _end(self, phase: str, reason: str = "", message: str = "") -> None:
        """The pod is terminal; `reason` is set when the node agent, not a container, ended it."""
        self.phase, self.reason, self.message = phase, reason, message
        for c in self.inits + self.mains:
            if reason and c.state.get("waiting") is not None:
                c.state = container_state("terminated", exitCode=START_ERROR_EXIT, reason="ContainerCannotRun",
                                          message=message, startedAt=None, finishedAt=now_rfc3339())
        self._report()

    # ------------------------------------------------------------ sandbox and volumes
    def _create_sandbox(self) -> None:
        for sub in ("tmp", "volumes"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "tmp").chmod(0o1777)
        self.ip = self.services.addresses.allocate(self.uid)
        self.sandbox = self.node.net.sandbox_name(self.uid)
        network.add_sandbox(self.node.net, self.sandbox, self.ip)
        self.start_time = now_rfc3339()
        self.services.hosts.register(self.uid, podspec.pod_host_entry(self.pod, self.ip), self.dir / "hosts")
        self._report()

    def _remove_sandbox(self) -> None:
        if self.sandbox:
            network.remove_sandbox(self.sandbox)
            self.sandbox = None
        self.services.hosts.unregister(self.uid)
        self.services.addresses.release(self.uid)

    def _context(self) -> PodContext:
        assert self.ip is not None
        return PodContext(self.pod, self.ip, self.node.net.host_ip, self.node.name)

    def _prepare_volumes(self) -> bool:
        """Write every volume; False (and the reason reported) when something it needs is missing."""
        ctx = self._context()
        try:
            for volume in self.pod["spec"].get("volumes") or ():
                self.volume_dirs[volume["name"]] = self._write_volume(ctx, volume)
        except ConfigError as e:
            for c in self.inits[:1] or self.mains:
                c.state = container_state("waiting", reason="ContainerCreating",
                                          message=f"MountVolume.SetUp failed: {e}")
            self._report()
            return False
        return True

    def _write_volume(self, ctx: PodContext, volume: Manifest) -> Path:
        if "hostPath" in volume:
            path, kind = Path(volume["hostPath"]["path"]), volume["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate" and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            elif kind and not path.exists():
                raise ConfigError(f"hostPath type check failed: {path} does not exist")
            return path
        files = podspec.volume_files(ctx, volume, self.api.configmap, self.api.secret,
                                     lambda audience, seconds: self.api.token(self.pod, audience, seconds))
        target = self.dir / "volumes" / volume["name"]
        target.mkdir(parents=True, exist_ok=True)
        for rel, (content, mode) in (files or {}).items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(mode)
        return target

    # ------------------------------------------------------------ containers
    def _run_together(self, runs: list[ContainerRun], policy: str) -> str | None:
        """Run `runs` side by side until none will run again: the phase they end in, or None to stop."""
        for c in runs:
            c.next_start = time.monotonic()
        while True:
            now = time.monotonic()
            for c in runs:
                if c.proc is not None and (code := c.proc.poll()) is not None:
                    self._exited(c, code, policy)
                elif c.proc is not None:
                    self._kill_if_unhealthy(c, now)
                if c.proc is None and now >= c.next_start:
                    self._start(c)
            self._report()
            if all(c.done for c in runs):
                return "Succeeded" if all(c.exit_code == 0 for c in runs) else "Failed"
            if self._sleep(POLL_SECONDS):
                return None

    def _start(self, c: ContainerRun) -> None:
        try:
            # A private temp dir through TMPDIR, not a mount over /tmp: the project (and its
            # environment, whose programs the pod runs) may itself live under /tmp.
            base = {**self.node.base_env(self.pod), "TMPDIR": str(self.dir / "tmp")}
            env = podspec.container_env(self._context(), c.spec, base, self.api.configmap, self.api.secret)
            argv = podspec.expand_argv(command_line(c.spec), env)
            probes = [] if c.init else parse_probes(c.spec)
        except ConfigError as e:
            c.state = container_state("waiting", reason="CreateContainerConfigError", message=str(e))
            c.next_start = time.monotonic() + CONFIG_RETRY_SECONDS
            return
        except ImageUnknown as e:
            pulled_before = c.start_failures > 0
            self._start_failed(c, "ImagePullBackOff" if pulled_before else "ErrImagePull", str(e))
            return
        except Unsupported as e:
            self._start_failed(c, "CreateContainerError", str(e))
            return
        c.start(argv, env, self.sandbox, self._hostname(), self._mounts(c), ENVIRONMENT_PATHS)
        log.info("pod %s: started container %s: %s", self.key, c.name, " ".join(argv))
        if probes and c.running:
            assert self.ip is not None
            c.probes = ContainerProbes(probes, self.ip, failed=self._probe_failed(c), changed=self.wake.set)
            c.probes.start()

    def _start_failed(self, c: ContainerRun, reason: str, message: str) -> None:
        """The container could not even be started: waiting with `reason`, retried after a back-off."""
        delay = min(BACKOFF_BASE * 2 ** c.start_failures, BACKOFF_MAX)
        c.start_failures += 1
        c.next_start = time.monotonic() + delay
        c.state = container_state("waiting", reason=reason, message=message)
        log.warning("pod %s: container %s cannot start (%s), next try in %.0f s: %s", self.key, c.name, reason,
                    delay, message)
        self.api.event(self.pod, "Warning", "Failed", f"Error: {reason}: {message}")

    def _probe_failed(self, c: ContainerRun) -> Callable[[Probe, str], None]:
        def failed(probe: Probe, why: str) -> None:
            self.api.event(self.pod, "Warning", "Unhealthy", f"{probe.name} probe failed: {why}")
        return failed

    def _kill_if_unhealthy(self, c: ContainerRun, now: float) -> None:
        """A failed liveness or startup probe: SIGTERM, then SIGKILL after the grace period; `_exited` restarts it."""
        assert c.proc is not None
        if c.kill_deadline is None and c.probes is not None and (why := c.probes.kill_reason):
            probe = c.spec.get("livenessProbe") or c.spec.get("startupProbe") or {}
            grace = probe.get("terminationGracePeriodSeconds",
                              self.pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
            log.info("pod %s: killing container %s: %s", self.key, c.name, why)
            self.api.event(self.pod, "Normal", "Killing", f"Container {c.name} failed its probe, will be restarted")
            c.probes.stop()
            signal_main(c.proc.pid, signal.SIGTERM)
            c.kill_deadline = now + float(grace)
        elif c.kill_deadline is not None and now >= c.kill_deadline:
            signal_group(c.proc.pid, signal.SIGKILL)

    def _exited(self, c: ContainerRun, code: int, policy: str) -> None:
        assert c.proc is not None
        # Like a container's PID namespace going away: nothing it started outlives it.
        signal_group(c.proc.pid, signal.SIGKILL)
        exit_code = c.exited(code)
        log.info("pod %s: container %s exited with %d", self.key, c.name, exit_code)
        # Init containers run to success: for them Always means OnFailure.
        if (policy == "Always" and not c.init) or (policy != "Never" and exit_code != 0):
            c.last_state = c.state
            if time.monotonic() - c.started_mono >= BACKOFF_RESET:
                c.crashes = 0
            delay = min(BACKOFF_BASE * 2 ** c.crashes, BACKOFF_MAX)
            c.crashes += 1
            c.next_start = time.monotonic() + delay
            message = f"back-off {delay:.0f}s restarting failed container={c.name} pod={self.pod_name}"
            c.state = container_state("waiting", reason="CrashLoopBackOff", message=message)
            self.api.event(self.pod, "Warning", "BackOff", "Back-off restarting failed container "
                                                           f"{c.name} in pod {self.pod_name}")
        else:
            c.next_start = float("inf")

    def _stop_containers(self) -> None:
        """SIGTERM every running container's first process (as the container runtime does), SIGKILL
        all that is left of the container after the grace period."""
        running = [(c, c.proc) for c in self.inits + self.mains if c.proc is not None]
        if not running:
            return
        for _, proc in running:
            signal_main(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._grace_seconds()
        while time.monotonic() < deadline and any(proc.poll() is None for _, proc in running):
            time.sleep(0.1)
        for c, proc in running:
            signal_group(proc.pid, signal.SIGKILL)
            c.exited(proc.wait())  # its exit code and termination message, for the final status

    def _grace_seconds(self) -> float:
        if self.shutting_down:
            return SHUTDOWN_GRACE_SECONDS
        if self.gone:
            return 0
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds", spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
        return float(grace)

    def _hostname(self) -> str:
        return str(self.pod["spec"].get("hostname") or self.pod_name)[:63]

    def _mounts(self, c: ContainerRun) -> list[Manifest]:
        mounts: list[Manifest] = [
            {"source": str(self.dir / "hosts"), "target": "/etc/hosts", "readOnly": False},
        ]
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes") or ()}
        for m in c.spec.get("volumeMounts") or ():
            volume = volumes[m["name"]]
            if m["mountPath"] == "/dev/shm" and volume.get("emptyDir", {}).get("medium") == "Memory":
                continue  # the host's /dev/shm serves: shared memory is not a file system to copy
            source = self.volume_dirs[m["name"]]
            if m.get("subPath"):
                source = source / m["subPath"]
                if not source.exists():
                    source.mkdir(parents=True)
            read_only = bool(m.get("readOnly")) or not ("emptyDir" in volume or "hostPath" in volume)
            mounts.append({"source": str(source), "target": m["mountPath"], "readOnly": read_only})
        return mounts

    def container_log(self, container: str, previous: bool = False) -> tuple[Path, bool] | None:
        """The log of the container's current (or previous) run and whether it is still being written."""
        c = next((c for c in self.inits + self.mains if c.name == container), None)
        if c is None or c.runs == 0 or (previous and c.runs < 2):
            return None
        return c.log_path(c.runs - 1 if previous else c.runs), (not previous and c.running)

    # ------------------------------------------------------------ status
    def _condition(self, type_: str, ok: bool, reason: str = "") -> Manifest:
        status = "True" if ok else "False"
        last = self.transitions.get(type_)
        if last is None or last[0] != status:
            last = self.transitions[type_] = (status, now_rfc3339())
        cond = {"type": type_, "status": status, "lastTransitionTime": last[1], "lastProbeTime": None}
        cond["reason"] = reason or None
        return cond

    def status(self) -> Manifest:
        terminal = self.phase in ("Succeeded", "Failed")
        phase = self.phase
        if not terminal:
            phase = "Running" if self.initialized and any(c.runs for c in self.mains) else "Pending"
        ready = phase == "Running" and all(c.ready for c in self.mains)
        not_ready = "PodCompleted" if terminal else ("" if ready else "ContainersNotReady")
        status: Manifest = {
            "phase": phase,
            "hostIP": self.node.net.host_ip, "hostIPs": [{"ip": self.node.net.host_ip}],
            "conditions": [
                self._condition("PodReadyToStartContainers", self.ip is not None and not terminal),
                self._condition("Initialized", self.initialized, "" if self.initialized else "ContainersNotInitialized"),
                self._condition("ContainersReady", ready, not_ready),
                self._condition("Ready", ready, not_ready),
            ],
            "containerStatuses": [c.status() for c in self.mains],
            "reason": self.reason or None, "message": self.message or None,
        }
        if self.inits:
            status["initContainerStatuses"] = [c.status() for c in self.inits]
        if self.ip:
            status["podIP"], status["podIPs"] = self.ip, [{"ip": self.ip}]
        if self.start_time:
            status["startTime"] = self.start_time
        return status

    def _report(self) -> None:
        if self.gone:
            return
        status = self.status()
        if status == self.reported:
            return
        try:
            self.api.patch_status(self.pod, status)
            self.reported = status
        except Exception as e:  # the next change reports again; a pod deleted meanwhile is fine
            log.warning("pod %s: status update failed: %s", self.key, e)

