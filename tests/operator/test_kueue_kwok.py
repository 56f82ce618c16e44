"""Kueue admission against a real Kueue on the local cluster, with kwok GPU nodes (only scheduling matters).

The operator runs with KUBETUNE_KUEUE=true; the platform team's objects (a ResourceFlavor, a
ClusterQueue with a GPU quota, a LocalQueue) are made with kubectl, as on a real cluster.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    FAKE_NODE_SELECTOR,
    Jobs,
    Kueue,
    OperatorProcess,
    Recorder,
    ftj,
    queued_job,
    wait_for,
)
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kubetune_api.timestamps import parse_timestamp
from kubetune_operator.kube import Kube, _object_missing
from kubetune_testbed.nodes import FAKE_NODE_TOLERATION

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def operator(cluster: Any, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator with the Kueue integration on (what the chart's kueue.enabled=true sets)."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess({**cluster.env, "KUBETUNE_KUEUE": "true"}, log)
    op.start()
    yield op
    op.kill(signal.SIGTERM)
    print(f"operator log: {log}")


def phase(jobs: Jobs, name: str) -> str:
    return str(jobs.status(name).get("phase", ""))


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def wl_condition(wl: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (wl.get("status") or {}).get("conditions") or () if c["type"] == type_), None)


def finish(jobs: Jobs, name: str) -> None:
    """Both workers complete, as their kubelet would report it."""
    for pod in jobs.pods(name):
        jobs.terminate_worker(pod["metadata"]["name"], 0)


def test_a_gpu_quota_admits_two_jobs_and_queues_the_third_until_one_finishes(
        operator: OperatorProcess, jobs: Jobs, kueue: Kueue, cluster: Any, tmp_path: Path) -> None:
    queue = kueue.queue(f"gpus-{jobs.ns[-6:]}", gpus=16, node_labels=FAKE_NODE_SELECTOR,
                        tolerations=[FAKE_NODE_TOLERATION])
    pods = Recorder(cluster, jobs.ns, tmp_path / "pods.json", kind="pods")
    for name in ("a", "b"):
        jobs.apply(queued_job(ftj(name, nodes=2, gpus=4), queue))
    wait_for(lambda: phase(jobs, "a") == "Running" and phase(jobs, "b") == "Running", timeout=60,
             what="jobs a and b admitted and Running")
    jobs.apply(queued_job(ftj("c", nodes=2, gpus=4), queue))

    def queued_with_kueues_reason() -> dict[str, Any] | None:
        status = jobs.status("c")
        return status if status.get("phase") == "Queued" and "insufficient" in status.get("message", "") else None

    status = wait_for(queued_with_kueues_reason, timeout=30, what="c Queued with Kueue's reason")
    print("c:", status["message"])
    assert f"queued in LocalQueue {queue}: " in status["message"]
    assert "nvidia.com/gpu" in status["message"]
    assert condition(status, "Queued")["status"] == "True"
    assert "startTime" not in status
    wait_for(lambda: any(e["reason"] == "Queued" and "insufficient" in e["message"] for e in jobs.events("c")),
             timeout=10, what="a Queued Event with Kueue's reason")
    assert jobs.pods("c") == []
    for name in ("a", "b"):  # admitted on the flavor: its node labels are on the workers
        wl = kueue.workload(name)
        assert wl["status"]["admission"]["clusterQueue"] == queue
        assert wl["spec"]["podSets"][0]["count"] == 2
        assert wl["metadata"]["ownerReferences"][0]["name"] == name

    finish(jobs, "a")
    wait_for(lambda: phase(jobs, "a") == "Succeeded", timeout=30, what="a Succeeded")
    finished = wait_for(lambda: wl_condition(kueue.workload("a"), "Finished"), timeout=30, what="a's Workload Finished")
    assert finished["status"] == "True" and finished["reason"] == "Succeeded"
    wait_for(lambda: phase(jobs, "c") == "Running", timeout=60, what="c admitted once a's quota was released")
    status = jobs.status("c")
    assert condition(status, "Queued")["status"] == "False"
    assert "Admitted" in {e["reason"] for e in jobs.events("c")}

    # Every version of every pod the watch saw: c's pods only appeared after Kueue admitted c.
    admitted = parse_timestamp(wl_condition(kueue.workload("c"), "QuotaReserved")["lastTransitionTime"])
    seen = pods.stop()
    c_pods = [p for p in seen if p["metadata"]["labels"].get("kubetune.io/job-name") == "c"]
    assert c_pods, "the watch saw none of c's pods"
    assert all(parse_timestamp(p["metadata"]["creationTimestamp"]) >= admitted for p in c_pods)
    assert {p["metadata"]["name"] for p in c_pods} == {"c-worker-0", "c-worker-1"}
    assert all(p["spec"]["nodeSelector"].get("type") == "kwok" for p in c_pods)


def test_a_job_whose_priority_class_does_not_exist_says_so(operator: OperatorProcess, jobs: Jobs, kueue: Kueue) -> None:
    queue = kueue.queue(f"prio-{jobs.ns[-6:]}", gpus=8, node_labels=FAKE_NODE_SELECTOR,
                        tolerations=[FAKE_NODE_TOLERATION])
    jobs.apply(queued_job(ftj("p", nodes=1, gpus=1), queue, priority="no-such-class"))
    status = wait_for(lambda: (s := jobs.status("p")).get("phase") == "Queued" and "no-such-class" in s.get("message", "")
                      and s, timeout=30, what="p Queued, naming the missing WorkloadPriorityClass")
    assert "names no WorkloadPriorityClass" in status["message"]
    assert jobs.pods("p") == []


def test_without_the_label_a_job_runs_at_once(operator: OperatorProcess, jobs: Jobs, cluster: Any) -> None:
    jobs.apply(ftj("plain", nodes=1, gpus=1))
    wait_for(lambda: phase(jobs, "plain") == "Running", timeout=60, what="plain Running without Kueue")
    out = cluster.kubectl("get", "workloads.kueue.x-k8s.io", "-n", jobs.ns, "-o", "json")
    assert json.loads(out.stdout)["items"] == []


def test_a_missing_workload_and_a_missing_kueue_are_told_apart(cluster: Any, namespace: str) -> None:
    """The operator's Queued message "Kueue is not installed" rests on how the API server answers."""
    kube = Kube(config.new_client_from_config(cluster.env["KUBECONFIG"]))
    assert kube.get_workload(namespace, "no-such-workload") == (None, True)
    custom = client.CustomObjectsApi(kube.custom.api_client)
    with pytest.raises(ApiException) as unserved:
        custom.get_namespaced_custom_object("nothing.example.com", "v1", namespace, "things", "x")
    assert unserved.value.status == 404 and not _object_missing(unserved.value)
