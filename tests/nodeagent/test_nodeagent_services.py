"""What every pod's runner shares on the node agent's node: addresses and /etc/hosts, without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune_testbed.nodeagent.addresses import AddressPool
from kubetune_testbed.nodeagent.hosts import HostsFiles
from kubetune_testbed.nodeagent.network import PodNetwork
from kubetune_testbed.nodeagent.node import NodeIdentity
from kubetune_testbed.nodeagent.podspec import HostEntry


def test_each_pod_keeps_its_address_until_released_and_the_host_address_is_never_given() -> None:
    pool = AddressPool(PodNetwork(7))
    first, second = pool.allocate("uid-a"), pool.allocate("uid-b")
    assert (first, second) == ("10.244.7.2", "10.244.7.3")
    assert pool.allocate("uid-a") == first
    pool.release("uid-a")
    assert pool.allocate("uid-c") == first


def test_a_full_pod_network_says_which_subnet_is_full() -> None:
    pool = AddressPool(PodNetwork(7))
    for i in range(253):
        pool.allocate(f"uid-{i}")
    with pytest.raises(RuntimeError, match=r"10\.244\.7\.0/24"):
        pool.allocate("one-too-many")


def test_pods_of_a_subdomain_see_each_other_and_stop_seeing_a_pod_that_left(tmp_path: Path) -> None:
    hosts = HostsFiles()
    w0, w1 = tmp_path / "w0", tmp_path / "w1"
    alone = tmp_path / "other"
    hosts.register("a", HostEntry("10.244.0.2", "job-worker-0", "job", "ns"), w0)
    hosts.register("b", HostEntry("10.244.0.3", "job-worker-1", "job", "ns"), w1)
    hosts.register("c", HostEntry("10.244.0.4", "lonely", "", "ns"), alone)
    inode = w0.stat().st_ino
    assert "10.244.0.3\tjob-worker-1.job.ns.svc.cluster.local" in w0.read_text()
    assert "10.244.0.2\tjob-worker-0.job.ns.svc.cluster.local" in w1.read_text()
    assert "job-worker" not in alone.read_text() and "10.244.0.4\tlonely" in alone.read_text()

    hosts.unregister("b")
    assert "job-worker-1" not in w0.read_text()
    assert w0.stat().st_ino == inode, "rewritten in place: the pod's bind mount holds the inode"


def test_a_containers_environment_starts_with_where_the_api_server_is(tmp_path: Path) -> None:
    node = NodeIdentity("local-node-0", PodNetwork(3), tmp_path, "10.244.3.1", 6443)
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"hostname": "h"}}
    env = node.base_env(pod)
    assert env["KUBERNETES_SERVICE_HOST"] == "10.244.3.1"
    assert env["KUBERNETES_PORT"] == "tcp://10.244.3.1:6443"
    assert env["HOSTNAME"] == "h"
