"""The operator's view of jobs and worker pods (informer.py).

The `Store` rules on plain data: the newer version wins whichever way it
arrives (the watch, or the API server's answer to the operator's own write), a
DELETED event never removes a newer pod of the same name, and a relist drops
what vanished while nobody watched. Then the informers against the real API
server: a worker pod's life as the view sees it, label-filtered on the server,
and a reconcile that reads nothing from the API server.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from harness import Jobs, ftj, wait_for

from kubetune_api.constants import CONFIG_ANNOTATION, JOB_NAME_LABEL
from kubetune_operator import metrics
from kubetune_operator.informer import Informer, Store, View, WorkQueue
from kubetune_operator.reconcile import Reconciler


def pod(name: str, version: int, uid: str = "u1", job: str | None = "j", ns: str = "ns") -> dict[str, Any]:
    labels = {JOB_NAME_LABEL: job} if job else {}
    return {"kind": "Pod", "metadata": {"name": name, "namespace": ns, "uid": uid,
                                        "resourceVersion": str(version), "labels": labels}}


def by_job(obj: dict[str, Any]) -> str | None:
    return (obj["metadata"].get("labels") or {}).get(JOB_NAME_LABEL)


def names(objs: list[dict[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in objs]


def test_the_newer_version_wins_whichever_way_it_arrives() -> None:
    store = Store(by_job)
    assert store.write(pod("p", 10))
    assert not store.write(pod("p", 10)), "the same version again is no change"
    assert store.write(pod("p", 12))
    assert not store.write(pod("p", 11)), "an event older than the operator's own write is stale"
    assert store.get("ns", "p")["metadata"]["resourceVersion"] == "12"


def test_a_deleted_event_of_the_old_pod_leaves_the_new_pod_of_that_name() -> None:
    store = Store(by_job)
    store.write(pod("j-worker-0", 10, uid="old"))
    store.write(pod("j-worker-0", 20, uid="new"))  # recreated; the operator's create answer came first
    assert not store.remove(pod("j-worker-0", 15, uid="old"))
    assert names(store.by_index("ns", "j")) == ["j-worker-0"]
    assert store.remove(pod("j-worker-0", 21, uid="new"))
    assert store.by_index("ns", "j") == [] and store.get("ns", "j-worker-0") is None


def test_an_answer_that_comes_after_the_deleted_event_does_not_bring_the_pod_back() -> None:
    store = Store(by_job)
    store.write(pod("j-worker-1", 10, uid="failed"))
    # A finished pod is deleted at once; the watch's DELETED event can beat the delete call's answer.
    assert store.remove(pod("j-worker-1", 12, uid="failed"))
    assert not store.write(pod("j-worker-1", 12, uid="failed"))
    assert store.by_index("ns", "j") == []
    assert store.write(pod("j-worker-1", 14, uid="next")), "the next pod of that name is a new object"


def test_the_index_follows_a_label_change_and_namespaces_stay_apart() -> None:
    store = Store(by_job)
    store.write(pod("a", 1, job="j"))
    store.write(pod("b", 2, job="j"))
    store.write(pod("a", 1, job="j", ns="other"))
    store.write(pod("b", 3, job="k"))
    assert names(store.by_index("ns", "j")) == ["a"]
    assert names(store.by_index("ns", "k")) == ["b"]
    assert names(store.by_index("other", "j")) == ["a"]
    store.write(pod("b", 4, job=None))
    assert store.by_index("ns", "k") == []


def test_a_relist_drops_what_vanished_and_keeps_newer_own_writes() -> None:
    store = Store(by_job)
    store.write(pod("gone", 5))  # deleted while the watch was down: no DELETED event ever came
    store.write(pod("stays", 6))
    store.write(pod("mine", 30))  # created by the operator after the LIST's snapshot
    store.write(pod("elsewhere", 7, ns="other"))
    changed = store.replace([pod("stays", 9), pod("new", 8)], version=20, namespace="ns")
    assert sorted(names(changed)) == ["gone", "new", "stays"]
    assert sorted(names(store.by_index("ns", "j"))) == ["mine", "new", "stays"]
    assert store.get("other", "elsewhere") is not None, "a namespace's relist leaves the others"


def test_the_store_keeps_no_copy_of_what_the_operator_never_reads() -> None:
    store = Store(by_job)
    worker = pod("w", 1)
    worker["metadata"] |= {"managedFields": [{"manager": "kubetune"}],
                           "annotations": {CONFIG_ANNOTATION: "{...the job's spec...}", "team": "nlp"}}
    store.write(worker)
    kept = store.get("ns", "w")["metadata"]
    assert "managedFields" not in kept and kept["annotations"] == {"team": "nlp"}


def test_the_queue_runs_a_key_once_however_often_it_was_added_while_waiting() -> None:
    seen: list[tuple[str, str]] = []
    gate = threading.Event()

    def work(key: tuple[str, str]) -> None:
        gate.wait(10)
        seen.append(key)

    queue = WorkQueue(work, workers=1)
    queue.add(("ns", "first"))  # taken at once, held at the gate
    queue.start()
    wait_for(lambda: len(queue) == 0 or None, timeout=5, what="the first key taken")
    for _ in range(5):
        queue.add(("ns", "a"))
        queue.add(("ns", "b"))
    gate.set()
    wait_for(lambda: len(seen) == 3 or None, timeout=5, what="three keys processed")
    time.sleep(0.2)
    queue.stop()
    assert seen == [("ns", "first"), ("ns", "a"), ("ns", "b")]


def test_changes_held_back_for_a_moment_make_one_pass() -> None:
    runs: list[tuple[tuple[str, str], float]] = []
    queue = WorkQueue(lambda key: runs.append((key, time.monotonic())), workers=2)
    queue.start()
    start = time.monotonic()
    for _ in range(3):  # the pods of one job turning Running one after the other
        queue.add_after(("ns", "j"), 0.5)
        time.sleep(0.05)
    queue.add_after(("ns", "k"), 0.5)
    queue.add(("ns", "k"))  # a change that must not wait (the job itself changed) overtakes the delay
    wait_for(lambda: len(runs) == 2 or None, timeout=5, what="two passes")
    time.sleep(0.7)
    queue.stop()
    assert [key for key, _ in runs] == [("ns", "k"), ("ns", "j")]
    assert runs[0][1] - start < 0.3 and runs[1][1] - start >= 0.5


# ---------------------------------------------------------------- against the real API server
def _informer(cluster: Any, namespace: str, resource: str, store: Store, on_change: Any,
              label_selector: str = "") -> Informer:
    kube = Reconciler(cluster.api_client()).kube
    informer = Informer(resource, kube.list_calls(resource, (namespace,)), store, on_change, label_selector)
    informer.start()
    assert store.synced.wait(30), f"the {resource} informer never listed"
    return informer


@pytest.mark.cluster
def test_the_pod_view_follows_the_server_and_sees_only_worker_pods(
        cluster: Any, namespace: str, crd: None) -> None:
    seen: list[str] = []
    store = Store(by_job)
    informer = _informer(cluster, namespace, "pods", store, lambda p: seen.append(p["metadata"]["name"]),
                         label_selector=JOB_NAME_LABEL)
    try:
        for name, labels in (("worker", f"{JOB_NAME_LABEL}=j"), ("other", "app=unrelated")):
            cluster.kubectl("run", name, "-n", namespace, "--image=busybox", "--restart=Never",
                            f"--labels={labels}", "--", "sleep", "3600")
        wait_for(lambda: store.get(namespace, "worker"), timeout=30, what="the worker pod in the view")
        assert names(store.by_index(namespace, "j")) == ["worker"]
        cluster.kubectl("delete", "pod", "worker", "other", "-n", namespace, "--grace-period=0", "--force",
                        "--wait=false")
        wait_for(lambda: store.get(namespace, "worker") is None or None, timeout=30, what="the worker pod gone")
        assert store.by_index(namespace, "j") == []
        assert "other" not in seen, "the pod watch is filtered on the server by the job-name label"
        assert store.get(namespace, "other") is None
    finally:
        informer.stop()


def _reads() -> float:
    return sum(metrics.API_REQUESTS.labels(op)._value.get() for op in ("get_job", "list_pods", "list_jobs"))


@pytest.mark.cluster
def test_a_reconcile_from_the_view_reads_nothing_and_sees_its_own_writes_at_once(
        cluster: Any, jobs: Jobs) -> None:
    view = View(jobs=Store(), pods=Store(by_job))
    reconciler = Reconciler(cluster.api_client(), view=view)
    informers = [_informer(cluster, jobs.ns, "pods", view.pods, lambda _: None, JOB_NAME_LABEL),
                 _informer(cluster, jobs.ns, "jobs", view.jobs, lambda _: None)]
    try:
        jobs.apply(ftj("j"))
        wait_for(lambda: view.jobs.get(jobs.ns, "j"), timeout=30, what="the job in the view")
        reads = _reads()
        first = reconciler.reconcile(jobs.ns, "j")
        # At once, before any watch event: the view holds the status the pass wrote, and the next pass
        # sees the workers it created.
        assert view.jobs.get(jobs.ns, "j")["status"]["phase"] == "Pending"
        second = reconciler.reconcile(jobs.ns, "j")
        assert first is not None and first.create_ranks == [0, 1]
        assert second is not None and second.create_ranks == [], "the second pass knows the pods exist"
        wait_for(lambda: (reconciler.reconcile(jobs.ns, "j"), jobs.status("j").get("phase") == "Running")[1] or None,
                 timeout=60, what="the job Running")
        assert _reads() == reads, "no pass read the job or its pods from the API server"
        assert len(jobs.pods("j")) == 2
    finally:
        for informer in informers:
            informer.stop()
