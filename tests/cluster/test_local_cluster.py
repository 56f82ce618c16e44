"""The local cluster behaves like a real one: scheduling, garbage collection, RBAC, versions.

Every later test stands on these facts, so they are checked against the real
processes, the way a user of the cluster would observe them.
"""

from __future__ import annotations

import json

import pytest
from harness import wait_for

from kubetune_testbed.binaries import versions
from kubetune_testbed.nodes import FAKE_NODE_TOLERATION

pytestmark = pytest.mark.cluster


def gpu_pod(name: str, gpus: int) -> str:
    """A pod for kwok's fake GPU nodes (their taint tolerated, the node agent's node not selected)."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{
            "name": "main", "image": "busybox",
            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
        }], "tolerations": [FAKE_NODE_TOLERATION], "nodeSelector": {"type": "kwok"}},
    })


def test_server_reports_the_pinned_version(cluster) -> None:
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == versions()["KUBERNETES_VERSION"]
    assert out["clientVersion"]["gitVersion"] == versions()["KUBERNETES_VERSION"]


def test_fake_gpu_nodes_are_ready_with_gpu_capacity(cluster) -> None:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-l", "type=kwok", "-o", "json").stdout)["items"]
    assert len(nodes) >= 2
    for node in nodes:
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]


def test_gpu_pod_is_scheduled_and_runs_while_an_oversized_one_stays_pending(cluster, namespace) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=gpu_pod("fits", 8))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=gpu_pod("too-big", 9))

    def pod(name: str) -> dict:
        return json.loads(cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)

    running = wait_for(lambda: (p := pod("fits"))["status"].get("phase") == "Running" and p, what="pod fits Running")
    assert running["spec"]["nodeName"].startswith("kwok-gpu-")

    def unschedulable() -> dict | None:
        conds = {c["type"]: c for c in pod("too-big")["status"].get("conditions", [])}
        cond = conds.get("PodScheduled")
        return cond if cond and cond.get("reason") == "Unschedulable" else None

    cond = wait_for(unschedulable, what="too-big to be reported unschedulable")
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    assert pod("too-big")["status"]["phase"] == "Pending"


def test_deleting_an_owner_deletes_its_children(cluster, namespace) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cluster.kubectl("get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    child = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "child", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(child))
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(lambda: cluster.kubectl("get", "configmap", "child", "-n", namespace, check=False).returncode != 0,
             what="the garbage collector to delete the child")


def test_rbac_refuses_a_service_account_without_a_role(cluster, namespace) -> None:
    import urllib.error
    import urllib.request

    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    who = f"system:serviceaccount:{namespace}:nobody"
    assert cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, "--as", who, check=False).stdout.strip() == "no"

    token = cluster.kubectl("create", "token", "nobody", "-n", namespace).stdout.strip()
    url = f"{cluster.local.api_url}/api/v1/namespaces/{namespace}/pods"

    def request_status() -> int:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, context=cluster.local._ssl(None), timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    assert request_status() == 403

    # The same account with a Role is allowed: the refusal above was RBAC, not a broken token.
    cluster.kubectl("create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace)
    cluster.kubectl("create", "rolebinding", "nobody-reads", "--role=pod-reader",
                    f"--serviceaccount={namespace}:nobody", "-n", namespace)
    assert cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, "--as", who, check=False).stdout.strip() == "yes"
    wait_for(lambda: request_status() == 200, timeout=20, what="the RoleBinding to take effect")


def test_a_scheduler_that_exited_is_started_again_and_schedules(cluster, namespace) -> None:
    """kube-scheduler exits by design when it finds its cache corrupted (an API server restart can
    cause that); a real node's kubelet restarts it, and `LocalCluster.revive` does the same."""
    import os
    import signal

    from kubetune_testbed.state import is_alive

    proc = cluster.local.state.find("kube-scheduler")
    assert proc is not None
    os.kill(proc["pid"], signal.SIGKILL)
    wait_for(lambda: not is_alive(proc), what="the scheduler to exit")
    revived = wait_for(cluster.local.revive, what="revive to start the scheduler again")
    assert [name for name, _ in revived] == ["kube-scheduler"]
    assert cluster.local.revive() == []  # it runs now
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=gpu_pod("after", 1))
    wait_for(lambda: json.loads(cluster.kubectl("get", "pod", "after", "-n", namespace, "-o", "json").stdout)
             ["spec"].get("nodeName"), what="the new scheduler to bind a pod")
