"""Pods on the node agent's node really run, and look to a user like pods on a kubelet.

Each test applies plain Pods (short Python one-liners of the project's
environment) and checks what a user would: phase, exit code, termination
message, `kubectl logs`, that a deleted pod's process is gone, and that the
pods of a headless Service find each other by their DNS names.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from harness import wait_for

from kubetune_testbed.nodes import FAKE_NODE_TOLERATION, NODE_AGENT_NODE

pytestmark = pytest.mark.cluster


def python_pod(name: str, code: str, **spec: Any) -> dict[str, Any]:
    """A pod whose one container runs `python -c code` (`python` of the project's environment)."""
    container = {"name": "main", "image": "not-pulled.example/ignored:1", "command": ["python", "-c", code]}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **spec.pop("metadata", {})},
            "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


class Pods:
    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster, self.ns = cluster, namespace

    def apply(self, *manifests: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-n", self.ns, "-f", "-",
                             input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests)}))

    def get(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.cluster.kubectl("get", "pod", name, "-n", self.ns, "-o", "json").stdout))

    def exists(self, name: str) -> bool:
        return self.cluster.kubectl("get", "pod", name, "-n", self.ns, check=False).returncode == 0

    def wait_phase(self, name: str, *phases: str, timeout: float = 60) -> dict[str, Any]:
        return dict(wait_for(lambda: (p := self.get(name))["status"].get("phase") in phases and p,
                             timeout=timeout, what=f"pod {name} {'/'.join(phases)}"))

    def logs(self, name: str) -> str:
        return str(self.cluster.kubectl("logs", name, "-n", self.ns).stdout)


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["status"]["containerStatuses"][0]["state"]["terminated"])


def test_command_args_env_and_mounted_configmap_reach_the_process(cluster, namespace, pods: Pods) -> None:
    cluster.kubectl("create", "configmap", "settings", "-n", namespace,
                    "--from-literal=greeting=hello", "--from-literal=config.json={\"lr\": 0.1}")
    cluster.kubectl("create", "secret", "generic", "creds", "-n", namespace, "--from-literal=password=s3cret")
    code = ("import os, socket, sys; e = os.environ; "
            "print('args', sys.argv[1:]); "
            "print('env', e['LITERAL'], e['EXPANDED'], e['GREETING'], e['PASSWORD'], e['FROM_ENVFROM']); "
            "print('downward', e['POD_NAME'], e['POD_NAMESPACE'], e['POD_IP'], e['NODE']); "
            "print('file', open('/etc/kubetune/config.json').read()); "
            "print('cwd', os.getcwd(), 'hostname', socket.gethostname())")
    pods.apply(python_pod("env", code, container={
        "args": ["first", "$(LITERAL)"],
        "workingDir": "/tmp",
        "envFrom": [{"secretRef": {"name": "creds"}, "prefix": "FROM_"}],
        "env": [
            {"name": "LITERAL", "value": "plain"},
            {"name": "EXPANDED", "value": "$(LITERAL)-too"},
            {"name": "FROM_ENVFROM", "value": "$(FROM_password)"},
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        "volumeMounts": [{"name": "settings", "mountPath": "/etc/kubetune"}],
    }, volumes=[{"name": "settings", "configMap": {"name": "settings"}}]))

    pod = pods.wait_phase("env", "Succeeded", "Failed")
    out = pods.logs("env")
    assert pod["status"]["phase"] == "Succeeded", out
    assert pod["spec"]["nodeName"] == NODE_AGENT_NODE
    assert terminated(pod)["exitCode"] == 0 and terminated(pod)["reason"] == "Completed"
    ip = pod["status"]["podIP"]
    assert ip.startswith("10.244.")
    assert out.splitlines() == [
        "args ['first', 'plain']",
        "env plain plain-too hello s3cret s3cret",
        f"downward env {namespace} {ip} {NODE_AGENT_NODE}",
        'file {"lr": 0.1}',
        "cwd /tmp hostname env",
    ]


def test_a_failing_pod_reports_its_exit_code_and_termination_message(pods: Pods) -> None:
    pods.apply(
        python_pod("explicit", "import sys; open('/dev/termination-log', 'w').write('dataset line 7: not JSON'); "
                               "sys.exit(3)"),
        python_pod("fallback", "import sys; print('some progress'); print('Traceback: boom'); sys.exit(2)",
                   container={"terminationMessagePolicy": "FallbackToLogsOnError"}),
        python_pod("no-such-program", "", container={"command": ["kubetune-no-such-program"]}),
    )
    explicit = pods.wait_phase("explicit", "Succeeded", "Failed")
    assert explicit["status"]["phase"] == "Failed"
    assert terminated(explicit) | {"startedAt": "", "finishedAt": "", "containerID": ""} == {
        "exitCode": 3, "reason": "Error", "message": "dataset line 7: not JSON",
        "startedAt": "", "finishedAt": "", "containerID": ""}

    fallback = pods.wait_phase("fallback", "Succeeded", "Failed")
    assert terminated(fallback)["exitCode"] == 2
    assert terminated(fallback)["message"] == "some progress\nTraceback: boom"

    missing = pods.wait_phase("no-such-program", "Succeeded", "Failed")
    assert missing["status"]["phase"] == "Failed"
    assert terminated(missing)["reason"] == "StartError"
    assert "executable file not found in $PATH" in terminated(missing)["message"]


def test_deleting_a_running_pod_stops_its_process(cluster, namespace, pods: Pods) -> None:
    code = ("import os, signal, sys, time; "
            "signal.signal(signal.SIGTERM, lambda *_: (print('SIGTERM', flush=True), sys.exit(0))); "
            "print(os.getpid(), flush=True); time.sleep(600)")
    pods.apply(python_pod("sleeper", code, terminationGracePeriodSeconds=5))
    pod = pods.wait_phase("sleeper", "Running")
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    assert pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    pid = int(wait_for(lambda: pods.logs("sleeper").strip(), what="the pod's pid in its log"))
    assert Path(f"/proc/{pid}").exists()

    start = time.monotonic()
    cluster.kubectl("delete", "pod", "sleeper", "-n", namespace, "--wait=true", "--timeout=60s")
    assert time.monotonic() - start < 5, "SIGTERM ends it long before the grace period"
    assert not Path(f"/proc/{pid}").exists()
    assert not pods.exists("sleeper")


def test_kubectl_logs_follows_a_running_container_and_tails(cluster, namespace, pods: Pods) -> None:
    code = "import time\nfor i in range(4):\n    print('line', i, flush=True); time.sleep(0.5)"
    pods.apply(python_pod("talker", code))
    pods.wait_phase("talker", "Running")
    follow = cluster.kubectl("logs", "--follow", "talker", "-n", namespace, timeout=30)
    assert follow.stdout.splitlines() == [f"line {i}" for i in range(4)], "follows until the container ends"
    assert pods.wait_phase("talker", "Succeeded")
    tail = cluster.kubectl("logs", "--tail=1", "talker", "-n", namespace)
    assert tail.stdout == "line 3\n"


def test_pods_of_a_headless_service_reach_each_other_by_dns_name_on_the_same_port(cluster, namespace, pods: Pods) -> None:
    # What the operator builds: a headless Service, workers with hostname + subdomain, rank 0 as the rendezvous.
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gang"},
               "spec": {"clusterIP": "None", "selector": {"app": "gang"}, "publishNotReadyAddresses": True}}
    peer = {0: f"gang-1.gang.{namespace}.svc", 1: f"gang-0.gang.{namespace}.svc.cluster.local"}

    def worker(rank: int) -> dict[str, Any]:
        # Both listen on 29500; each sends its rank to the other and prints what it got.
        code = ("import socket, sys, time; "
                "srv = socket.create_server(('', 29500)); srv.settimeout(30); "
                f"peer = {peer[rank]!r}; deadline = time.time() + 30\n"
                "while True:\n"
                "    try:\n"
                "        c = socket.create_connection((peer, 29500), timeout=2); break\n"
                "    except OSError:\n"
                "        assert time.time() < deadline; time.sleep(0.2)\n"
                f"c.sendall(b'from {rank}'); c.close()\n"
                "conn, addr = srv.accept()\n"
                "print(socket.gethostname(), socket.gethostbyname(peer), conn.recv(64).decode(), addr[0])")
        return python_pod(f"gang-{rank}", code, hostname=f"gang-{rank}", subdomain="gang",
                          metadata={"labels": {"app": "gang"}})

    pods.apply(service, worker(0), worker(1))
    done = {r: pods.wait_phase(f"gang-{r}", "Succeeded", "Failed") for r in (0, 1)}
    ips = {r: done[r]["status"]["podIP"] for r in (0, 1)}
    assert ips[0] != ips[1]
    for rank in (0, 1):
        other = 1 - rank
        assert done[rank]["status"]["phase"] == "Succeeded", pods.logs(f"gang-{rank}")
        assert pods.logs(f"gang-{rank}").split() == [f"gang-{rank}", ips[other], "from", str(other), ips[other]]


def test_a_pod_reaches_the_api_server_with_its_service_account_and_s3(cluster, namespace, pods: Pods) -> None:
    cluster.kubectl("create", "role", "pod-reader", "--verb=get", "--resource=pods", "-n", namespace)
    cluster.kubectl("create", "rolebinding", "default-reads", "--role=pod-reader",
                    f"--serviceaccount={namespace}:default", "-n", namespace)
    env = cluster.local.env()
    code = ("import os, boto3; from kubernetes import client, config; config.load_incluster_config(); "
            "me = client.CoreV1Api().read_namespaced_pod(os.environ['POD'], os.environ['NS']); "
            "print('api', me.metadata.name, me.spec.service_account_name); "
            "s3 = boto3.client('s3', region_name='us-east-1'); "
            "print('s3', 'Buckets' in s3.list_buckets())")
    s3_env = [{"name": k, "value": env[k]} for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    pods.apply(python_pod("client", code, container={"env": [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}, *s3_env]}))
    pod = pods.wait_phase("client", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Succeeded", pods.logs("client")
    assert pods.logs("client").splitlines() == ["api client default", "s3 True"]


def test_gpu_pods_without_the_fake_node_toleration_land_on_the_agents_node(cluster, pods: Pods) -> None:
    node = json.loads(cluster.kubectl("get", "node", NODE_AGENT_NODE, "-o", "json").stdout)
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == os.environ.get("KUBETUNE_LOCAL_NODE_GPUS", "8")
    lease = json.loads(cluster.kubectl("get", "lease", NODE_AGENT_NODE, "-n", "kube-node-lease", "-o", "json").stdout)
    assert lease["spec"]["holderIdentity"] == NODE_AGENT_NODE

    gpu = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}
    pods.apply(python_pod("real", "print('ran')", container=gpu),
               python_pod("fake", "print('never runs')", container=gpu,
                          tolerations=[FAKE_NODE_TOLERATION], nodeSelector={"type": "kwok"}))
    real = pods.wait_phase("real", "Succeeded", "Failed")
    assert real["spec"]["nodeName"] == NODE_AGENT_NODE
    assert pods.logs("real") == "ran\n"
    fake = pods.wait_phase("fake", "Running")
    assert fake["spec"]["nodeName"].startswith("kwok-gpu-")
