"""The local cluster: a real Kubernetes control plane and a real S3 server as local processes.

Every test and the demo stand on this. It starts, in order and each only once
the previous one is really ready:

    etcd -> kube-apiserver -> kube-controller-manager -> kube-scheduler
         -> kwok (fake GPU nodes) -> node agent (a node whose pods really run) -> MinIO (S3)
         -> Kueue (job admission and quotas; kueue.py)

The node agent (kubetune_testbed.nodeagent) gives each pod a network namespace
on a bridge of this cluster's own (10.244.N.0/24); the API server and MinIO
listen on the bridge's host address, which both the machine and the pods reach.
Without the node agent (KUBETUNE_NODE_AGENT=0) everything listens on 127.0.0.1.

All state and logs live in one run directory (default `.local/` in the
repository). `up` writes `<run>/env`, which a user sources to get KUBECONFIG,
the S3 endpoint and credentials, and the matching kubectl and helm on PATH.
`down` stops every process `up` started, by pid, removes the bridge and the
pods' network namespaces, and leaves nothing behind. `attach` is how everything
else (tests, the demo, benchmarks) finds the cluster that runs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import kueue
from .binaries import Binaries, ensure_binaries
from .nodeagent import network as podnet
from .nodes import FAKE_NODE_ANNOTATION, NODE_AGENT_NODE, fake_gpu_node
from .pki import APISERVER_KUBELET_CLIENT, CLIENTS, NODE_AGENT_SERVING, kubeconfig, make_pki
from .ports import free_port
from .repository import DEFAULT_RUN_DIR
from .state import State, is_alive, stop_process

SERVICE_CIDR = "10.96.0.0/12"
READY_TIMEOUT = 120.0
# The components `restart` can stop and start again in place (same ports, certificates, data).
RESTARTABLE = ("kube-apiserver", "node-agent", "minio")
# Components `revive` starts again when they exited by themselves.
REVIVABLE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "node-agent", "minio", "kueue")


class ClusterError(RuntimeError):
    """A component failed to start or become ready; the message names it and its log."""


class LocalCluster:
    """One local cluster rooted at a run directory."""

    def __init__(self, run_dir: Path, fake_nodes: int = 2, gpus_per_node: int = 8,
                 node_agent: bool = True, node_gpus: int = 8) -> None:
        self.run = run_dir.resolve()
        self.pki = self.run / "pki"
        self.logs = self.run / "logs"
        self.state_file = self.run / "state.json"
        self.env_file = self.run / "env"
        self.fake_nodes = fake_nodes
        self.gpus_per_node = gpus_per_node
        self.node_agent = node_agent
        self.node_gpus = node_gpus
        self.bins = Binaries.pinned()
        self.state = State()

    # ---------------------------------------------------------------- paths
    @property
    def admin_kubeconfig(self) -> Path:
        return self.run / "admin.kubeconfig"

    @property
    def pod_network(self) -> podnet.PodNetwork | None:
        return podnet.PodNetwork(self.state.pod_network) if self.state.pod_network >= 0 else None

    @property
    def host_ip(self) -> str:
        """Where the API server and MinIO listen: the pod network's host address, reachable from pods too."""
        net = self.pod_network
        return net.host_ip if net else "127.0.0.1"

    @property
    def api_url(self) -> str:
        return f"https://{self.host_ip}:{self.state.ports['apiserver']}"

    @property
    def s3_url(self) -> str:
        return f"http://{self.host_ip}:{self.state.ports['minio']}"

    def env(self) -> dict[str, str]:
        """The variables `<run>/env` exports: what a client of this cluster needs."""
        path = os.pathsep.join([str(self.bins.kube("kubectl").parent), str(self.bins.helm.parent)])
        return {
            "KUBECONFIG": str(self.admin_kubeconfig),
            "AWS_ENDPOINT_URL": self.s3_url,
            "AWS_ACCESS_KEY_ID": self.state.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.state.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "KUBETUNE_LOCAL_RUN_DIR": str(self.run),
            "KUBETUNE_LOCAL_PATH": path,
        }

    # ---------------------------------------------------------------- lifecycle
    def up(self) -> None:
        previous = State.load(self.state_file)
        if previous is not None:
            self.state = previous
            if self.healthy():
                print(f"local cluster already up (run dir {self.run}); source {self.env_file}")
                return
            print(f"cleaning up a stale run directory {self.run}", file=sys.stderr)
            self.down(quiet=True)
        if self.run.exists():
            shutil.rmtree(self.run)
        self.logs.mkdir(parents=True)
        ensure_binaries(self.bins)
        names = ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok", "minio", "minio-console",
                 "kueue-webhook", "kueue-health")
        self.state = State(
            ports={name: free_port() for name in names},
            s3_access_key="kubetune-" + secrets.token_hex(4),
            s3_secret_key=secrets.token_urlsafe(24),
            fake_nodes=self.fake_nodes,
        )
        try:
            if self.node_agent:
                self._create_pod_network()
            make_pki(self.pki, host_ips=(self.host_ip,) if self.node_agent else ())
            for client in CLIENTS:
                target = self.admin_kubeconfig if client.file_stem == "admin" else self.run / f"{client.file_stem}.kubeconfig"
                target.write_text(kubeconfig(self.api_url, self.pki, client.file_stem))
                target.chmod(0o600)
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
            self._start_scheduler()
            self._start_kwok()
            if self.node_agent:
                self._start_node_agent()
            self._start_minio()
            self._start_kueue()
        except BaseException:
            self.down(quiet=True)
            raise
        self._write_env()
        print(f"local cluster up: {self.api_url}, S3 {self.s3_url}; source {self.env_file}")

    def down(self, quiet: bool = False) -> None:
        """Stop every process this run started (newest first) and wait until each is gone."""
        state = State.load(self.state_file) or self.state
        state.stop_processes()
        if state.pod_network >= 0:
            # The agent removes its pods' namespaces when it stops; this also covers an agent that was killed.
            podnet.destroy(podnet.PodNetwork(state.pod_network))
        if self.state_file.exists():
            self.state_file.unlink()
        if self.env_file.exists():
            self.env_file.unlink()
        if not quiet:
            print(f"local cluster down (run dir {self.run})")

    def healthy(self) -> bool:
        """Every process `up` started still runs and the API server answers ready."""
        if not self.state.all_alive():
            return False
        try:
            return self._get(self.api_url + "/readyz", client="admin") == 200
        except OSError:
            return False

    def restart(self, name: str, stop_timeout: float = 30.0) -> None:
        """Stop one component (SIGTERM, SIGKILL after `stop_timeout` s) and start it again as `up`
        did: same arguments, ports and data, appending to its log; returns once it is ready again.

        What a fault-injection run does to a control plane (kubetune_testbed.chaos). A node agent
        that stops stops its pods' processes first (as a kubelet's node does when it goes down),
        and the new one runs the pods bound to its node again from the start.
        """
        self.stop_component(name, stop_timeout)
        self.start_component(name)

    def stop_component(self, name: str, stop_timeout: float = 30.0) -> None:
        if name not in RESTARTABLE:
            raise ValueError(f"cannot restart {name!r}; only {', '.join(RESTARTABLE)}")
        proc = self.state.find(name)
        if proc is not None:
            stop_process(proc, stop_timeout)
            self.state.processes.remove(proc)
            self.state.save(self.state_file)

    def start_component(self, name: str) -> None:
        """Start a component that `stop_component` stopped; nothing when it runs."""
        proc = self.state.find(name)
        if proc is not None and is_alive(proc):
            return
        if proc is not None:
            self.state.processes.remove(proc)
        {"kube-apiserver": self._start_apiserver, "node-agent": self._start_node_agent,
         "minio": self._start_minio, "kube-controller-manager": self._start_controller_manager,
         "kube-scheduler": self._start_scheduler, "kueue": self._start_kueue}[name]()

    def revive(self) -> list[tuple[str, str]]:
        """Start again every component that exited by itself, as a kubelet restarts a crashed
        control-plane static pod (kube-scheduler exits by design when it finds its cache corrupted,
        which an API server restart can cause); returns (name, the last line of its log) for each,
        for the caller to report."""
        revived = []
        for name in REVIVABLE:
            proc = self.state.find(name)
            if proc is None or is_alive(proc):
                continue
            lines = (self.logs / f"{name}.log").read_text(errors="replace").strip().splitlines()
            self.start_component(name)
            revived.append((name, lines[-1] if lines else ""))
        return revived

    # ---------------------------------------------------------------- process helpers
    def _spawn(self, name: str, exe: Path, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [str(exe), *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.run, env={**os.environ, **(env or {})},
            start_new_session=True,  # survives `make up` returning; killed as a group by `down`
        )
        log.close()
        self.state.processes.append({"name": name, "pid": proc.pid, "exe": str(exe)})
        self.state.save(self.state_file)
        return proc

    def _wait(self, name: str, proc: subprocess.Popen[bytes], ready: Callable[[], bool],
              timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(self._failure(name, f"exited with code {proc.returncode}"))
            try:
                if ready():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.25)
        raise ClusterError(self._failure(name, f"not ready after {timeout:.0f}s"))

    def _failure(self, name: str, what: str) -> str:
        log = self.logs / f"{name}.log"
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        return f"{name} {what}; see its log {log}:\n" + "\n".join("  | " + line for line in tail)

    def _ssl(self, client: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if client:
            ctx.load_cert_chain(self.pki / f"{client}.crt", self.pki / f"{client}.key")
        return ctx

    def _get(self, url: str, client: str | None = None, insecure: bool = False) -> int:
        if insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = self._ssl(client)
        try:
            with urllib.request.urlopen(url, timeout=5, context=ctx if url.startswith("https") else None) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bins.kube("kubectl")), "--kubeconfig", str(self.admin_kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=60,
        )

    # ---------------------------------------------------------------- components
    def _start_etcd(self) -> None:
        p = self.state.ports
        client, peer = f"http://127.0.0.1:{p['etcd']}", f"http://127.0.0.1:{p['etcd-peer']}"
        proc = self._spawn("etcd", self.bins.etcd, [
            "--name=kubetune", f"--data-dir={self.run / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kubetune={peer}",
            "--unsafe-no-fsync",  # a test bed: speed over durability
            "--log-level=warn",
        ])
        self._wait("etcd", proc, lambda: self._get(client + "/health") == 200)

    def _start_apiserver(self) -> None:
        p, pki = self.state.ports, self.pki
        kubelet = [  # how it reaches the node agent's kubelet endpoint for `kubectl logs`
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / (APISERVER_KUBELET_CLIENT + '.crt')}",
            f"--kubelet-client-key={pki / (APISERVER_KUBELET_CLIENT + '.key')}",
            "--kubelet-preferred-address-types=InternalIP",
        ] if self.node_agent else []
        proc = self._spawn("kube-apiserver", self.bins.kube("kube-apiserver"), [
            f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
            f"--bind-address={self.host_ip}", f"--advertise-address={self.host_ip}", f"--secure-port={p['apiserver']}",
            *kubelet,
            f"--cert-dir={self.run / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
        ])
        self._wait("kube-apiserver", proc, lambda: self._get(self.api_url + "/readyz", client="admin") == 200)

    def _start_controller_manager(self) -> None:
        p, pki = self.state.ports, self.pki
        cfg = str(self.run / "controller-manager.kubeconfig")
        proc = self._spawn("kube-controller-manager", self.bins.kube("kube-controller-manager"), [
            f"--kubeconfig={cfg}", f"--authentication-kubeconfig={cfg}", f"--authorization-kubeconfig={cfg}",
            "--leader-elect=false", "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--bind-address=127.0.0.1", f"--secure-port={p['controller-manager']}",
            f"--cert-dir={self.run / 'controller-manager-certs'}",
            "--v=1",
        ])
        # Ready means its controllers work: the service-account controller has
        # made the `default` ServiceAccount that pods need to be admitted.
        self._wait("kube-controller-manager", proc,
                   lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default").returncode == 0)

    def _start_scheduler(self) -> None:
        port = self.state.ports["scheduler"]
        cfg = str(self.run / "scheduler.kubeconfig")
        proc = self._spawn("kube-scheduler", self.bins.kube("kube-scheduler"), [
            f"--kubeconfig={cfg}", f"--authentication-kubeconfig={cfg}", f"--authorization-kubeconfig={cfg}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.run / 'scheduler-certs'}",
            "--v=1",
        ])
        self._wait("kube-scheduler", proc,
                   lambda: self._get(f"https://127.0.0.1:{port}/readyz", insecure=True) == 200)

    def _start_kwok(self) -> None:
        stages = self.bins.kwok_stages
        files = [stages / "node/fast/node-initialize.yaml",
                 stages / "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
                 stages / "pod/fast/pod-ready.yaml", stages / "pod/fast/pod-complete.yaml",
                 stages / "pod/fast/pod-delete.yaml"]
        config = self.run / "kwok-stages.yaml"
        config.write_text("\n---\n".join(f.read_text() for f in files))
        proc = self._spawn("kwok", self.bins.kwok, [
            f"--kubeconfig={self.run / 'kwok.kubeconfig'}", f"--config={config}",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{self.state.ports['kwok']}",
        ])
        nodes = [fake_gpu_node(f"kwok-gpu-{i}", self.gpus_per_node) for i in range(self.fake_nodes)]
        if nodes:
            result = self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
            if result.returncode != 0:
                raise ClusterError(f"creating fake nodes failed: {result.stderr.strip()}")
        self._wait("kwok", proc, lambda: self._ready_fake_nodes() >= self.fake_nodes)

    def _ready_fake_nodes(self) -> int:
        out = self.kubectl("get", "nodes", "-o", "json")
        if out.returncode != 0:
            return 0
        ready = 0
        for node in json.loads(out.stdout)["items"]:
            if node["metadata"].get("annotations", {}).get(FAKE_NODE_ANNOTATION) != "fake":
                continue
            conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            ready += conditions.get("Ready") == "True"
        return ready

    def _create_pod_network(self) -> None:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise ClusterError("the node agent needs root and iproute2 (`ip`) for its pods' network namespaces; "
                               "run as root, or set KUBETUNE_NODE_AGENT=0 for a cluster without it (kwok only)")
        self.state.pod_network = podnet.create_bridge().index
        self.state.save(self.state_file)

    def _start_node_agent(self) -> None:
        assert self.pod_network is not None
        proc = self._spawn("node-agent", Path(sys.executable), [
            "-m", "kubetune_testbed.nodeagent", f"--run-dir={self.run}", f"--kubeconfig={self.run / 'node-agent.kubeconfig'}",
            f"--network-index={self.pod_network.index}", f"--node-name={NODE_AGENT_NODE}",
            f"--gpus={self.node_gpus}", f"--kubelet-version={self.bins.v['KUBERNETES_VERSION']}",
            f"--serving-cert={NODE_AGENT_SERVING}",
        ], env={"PYTHONUNBUFFERED": "1"})
        self._wait("node-agent", proc, self._node_agent_ready)

    def _node_agent_ready(self) -> bool:
        out = self.kubectl("get", "node", NODE_AGENT_NODE, "-o", "json")
        if out.returncode != 0:
            return False
        conditions = {c["type"]: c["status"] for c in json.loads(out.stdout)["status"].get("conditions", [])}
        return conditions.get("Ready") == "True"

    def _start_minio(self) -> None:
        p = self.state.ports
        proc = self._spawn("minio", self.bins.minio, [
            "server", "--quiet", f"--address={self.host_ip}:{p['minio']}",
            f"--console-address=127.0.0.1:{p['minio-console']}", str(self.run / "minio"),
        ], env={"MINIO_ROOT_USER": self.state.s3_access_key, "MINIO_ROOT_PASSWORD": self.state.s3_secret_key,
                "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"})
        self._wait("minio", proc, lambda: self._get(self.s3_url + "/minio/health/ready") == 200)
        self._wait("minio", proc, self._bucket_round_trip, timeout=30)

    def _start_kueue(self) -> None:
        """Kueue's CRDs, then its manager, then (once it serves them) its webhooks."""
        p = self.state.ports
        crds = self.kubectl("apply", "--server-side", "-f", str(self.bins.kueue_crds))
        if crds.returncode != 0:
            raise ClusterError(f"installing Kueue's CRDs failed: {crds.stderr.strip()}")
        waited = self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(self.bins.kueue_crds))
        if waited.returncode != 0:
            raise ClusterError(f"Kueue's CRDs not established: {waited.stderr.strip()}")
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": kueue.NAMESPACE}}
        self.kubectl("apply", "-f", "-", input=json.dumps(namespace))
        cert_dir = self.run / "kueue-certs"
        kueue.write_serving_cert(self.pki, cert_dir)
        try:
            kueue.ensure_metrics_cert(self.pki)
        except PermissionError as e:
            raise ClusterError(f"Kueue needs a certificate at {kueue.METRICS_CERT_DIR} and this user cannot "
                               f"write it ({e}); run `make up` as root once") from e
        config = self.run / "kueue-config.yaml"
        config.write_text(kueue.configuration(p["kueue-webhook"], p["kueue-health"], cert_dir))
        proc = self._spawn("kueue", self.bins.kueue, [
            f"--config={config}", "--feature-gates=VisibilityOnDemand=false", "--zap-log-level=info",
        ], env={"KUBECONFIG": str(self.run / "kueue.kubeconfig")})
        self._wait("kueue", proc, lambda: self._get(f"http://127.0.0.1:{p['kueue-health']}/readyz") == 200)
        hooks = kueue.webhook_configurations(self.bins.kueue_webhooks, p["kueue-webhook"],
                                             (self.pki / "ca.crt").read_bytes())
        result = self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": hooks}))
        if result.returncode != 0:
            raise ClusterError(f"registering Kueue's webhooks failed: {result.stderr.strip()}")

    def _bucket_round_trip(self) -> bool:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1",
                          aws_access_key_id=self.state.s3_access_key,
                          aws_secret_access_key=self.state.s3_secret_key)
        bucket = "kubetune-readiness"
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="probe", Body=b"ok")
        ok = s3.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"ok"
        s3.delete_object(Bucket=bucket, Key="probe")
        s3.delete_bucket(Bucket=bucket)
        return ok

    def _write_env(self) -> None:
        env = self.env()
        lines = [f"export {k}={v}" for k, v in env.items() if k != "KUBETUNE_LOCAL_PATH"]
        lines.append(f'export PATH="{env["KUBETUNE_LOCAL_PATH"]}:$PATH"')
        self.env_file.write_text("# source this file: the local cluster's client settings\n" + "\n".join(lines) + "\n")
        self.env_file.chmod(0o600)  # it holds the S3 secret key

    def status(self) -> bool:
        """Print whether the cluster is up and each of its processes; True when it is healthy."""
        state = State.load(self.state_file)
        if state is None:
            print("local cluster is down")
            return False
        self.state = state
        healthy = self.healthy()
        print("local cluster is " + ("up" if healthy else "unhealthy (run `make up` to restart it)"))
        for proc in state.processes:
            print(f"  {proc['name']:<24} pid {proc['pid']:<8} {'running' if is_alive(proc) else 'GONE'}")
        return healthy


def default_run_dir() -> Path:
    """KUBETUNE_LOCAL_RUN_DIR (which `<run>/env` exports), else `.local/` in the repository."""
    return Path(os.environ.get("KUBETUNE_LOCAL_RUN_DIR", DEFAULT_RUN_DIR))


def attach(run_dir: Path | None = None) -> LocalCluster | None:
    """The running, healthy local cluster of `run_dir` (default: default_run_dir()), or None.

    What every client of a cluster started with `make up` uses: the tests' session
    fixture, the demo, the benchmarks. It never starts or stops anything.
    """
    cluster = LocalCluster(run_dir if run_dir is not None else default_run_dir())
    state = State.load(cluster.state_file)
    if state is None:
        return None
    cluster.state = state
    return cluster if cluster.healthy() else None
