"""The local cluster's nodes: kwok's fake GPU nodes, and the node agent's one node whose pods really run.

Pods go to the node agent's node unless they tolerate the fake nodes' taint:
that is how control-plane tests and benchmarks keep their pods on fake nodes,
where nothing runs, while every other pod really runs.
"""

from __future__ import annotations

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# kwok's nodes only take pods that tolerate this: everything else goes to the node agent, where it really runs.
FAKE_NODE_TAINT = {"key": "kubetune.io/fake-node", "value": "true", "effect": "NoSchedule"}
FAKE_NODE_TOLERATION = {"key": "kubetune.io/fake-node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
NODE_AGENT_NODE = "local-node-0"


def fake_gpu_node(name: str, gpus: int) -> dict[str, object]:
    """A Node that kwok keeps Ready and whose pods it marks Running; only pods with FAKE_NODE_TOLERATION land there."""
    capacity = {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": str(gpus),
                "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "type": "kwok", "nvidia.com/gpu.present": "true"},
        },
        "spec": {"taints": [FAKE_NODE_TAINT]},
        "status": {"capacity": capacity, "allocatable": capacity},
    }
