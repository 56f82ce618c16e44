"""The operator against the local cluster, with kwok GPU nodes standing in for GPU machines.

Each test does what a user (or a kubelet, or a cluster failure) does to a job
and checks what the user would look at: the job's status and Events, and the
pods, Service and RBAC objects that exist.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from harness import FAKE_NODE_SELECTOR, FAKE_NODE_TOLERATION, Jobs, ftj, wait_for

from kubetune_api import parse_job

pytestmark = pytest.mark.cluster


def running(jobs: Jobs, name: str, attempt: int = 1) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = jobs.status(name)
        pods = [p for p in jobs.pods(name) if p["metadata"]["name"] != f"{name}-preflight"]
        ok = (status.get("phase") == "Running" and (status.get("workers") or {}).get("attempt") == attempt
              and (status.get("workers") or {}).get("ready") == len(pods)
              and all(p["metadata"]["labels"]["kubetune.io/attempt"] == str(attempt) for p in pods))
        return status if ok else None

    return dict(wait_for(check, timeout=60, what=f"{name} Running (attempt {attempt})"))


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def test_two_node_job_gets_its_children_and_runs(operator, jobs: Jobs, cluster) -> None:
    jobs.apply(ftj("llama", nodes=2, gpus=8, podMetadata={
        "labels": {"team": "nlp", "example.com/cost-centre": "cc-42"},
        "annotations": {"example.com/owner": "Ada Lovelace <ada@example.com>"}}))
    status = running(jobs, "llama")
    assert status["workers"] == {**status["workers"], "ready": 2, "total": 2}
    assert status["observedGeneration"] == 1
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Reconciling")["status"] == "False"
    assert status["restarts"] == {"infrastructure": 0, "application": 0, "hang": 0}

    ns = jobs.ns
    svc = json.loads(cluster.kubectl("get", "service", "llama", "-n", ns, "-o", "json").stdout)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {"kubetune.io/job-name": "llama"}
    # The workers' identity is the namespace's, and outlives the job.
    for kind in ("serviceaccount", "role", "rolebinding"):
        found = json.loads(cluster.kubectl("get", kind, "kubetune-worker", "-n", ns, "-o", "json").stdout)
        assert "ownerReferences" not in found["metadata"]
    # No ConfigMap: each worker carries the trainer's config.
    assert cluster.kubectl("get", "configmaps", "-n", ns, "-l", "kubetune.io/job-name=llama",
                           "-o", "name").stdout.strip() == ""

    pods = jobs.pods("llama")
    assert [p["metadata"]["name"] for p in pods] == ["llama-worker-0", "llama-worker-1"]
    gpu_nodes = set(cluster.kubectl("get", "nodes", "-l", "nvidia.com/gpu.present=true", "-o", "name").stdout.split())
    for rank, pod in enumerate(pods):
        assert f"node/{pod['spec']['nodeName']}" in gpu_nodes
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
        container = pod["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", "kubetune_trainer.launch"] and container["args"][0] == "torchrun"
        assert f"--node-rank={rank}" in container["args"]
        assert "--nnodes=2" in container["args"] and "--nproc-per-node=8" in container["args"]
        assert f"--rdzv-endpoint=llama-worker-0.llama.{ns}.svc:29500" in container["args"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        env = {e["name"]: e for e in container["env"]}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}
        assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
        assert env["AWS_ENDPOINT_URL"] == {"name": "AWS_ENDPOINT_URL", "value": "http://minio.example:9000"}
        assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["spec"]["volumes"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        # What the trainer reads back (the pod's annotation, through its downward-API volume "config"): the
        # job's identity and a spec of 2 x 8 processes.
        trainer_job = parse_job(json.loads(pod["metadata"]["annotations"]["kubetune.io/config"]))
        job_uid = pod["metadata"]["ownerReferences"][0]["uid"]
        assert (trainer_job.metadata.name, trainer_job.metadata.uid) == ("llama", job_uid)
        assert trainer_job.spec.world_size == 16
        assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["spec"]["hostname"] == f"llama-worker-{rank}" and pod["spec"]["subdomain"] == "llama"
        assert pod["metadata"]["annotations"]["example.com/owner"] == "Ada Lovelace <ada@example.com>"
    # The user's labels select the workers, as a cluster policy would; the operator's are all there too.
    selected = cluster.kubectl("get", "pods", "-n", ns, "-l", "team=nlp,example.com/cost-centre=cc-42,"
                               "kubetune.io/job-name=llama,app.kubernetes.io/component=worker", "-o", "name")
    assert selected.stdout.split() == ["pod/llama-worker-0", "pod/llama-worker-1"]

    reasons = {e["reason"] for e in jobs.events("llama")}
    assert {"CreatingWorkers", "WorkersRunning"} <= reasons


def _request(cluster, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{cluster.local.api_url}{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"})
    try:
        with urllib.request.urlopen(req, context=cluster.local._ssl(None), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_a_workers_token_may_patch_only_its_own_jobs_status(operator, jobs: Jobs, cluster) -> None:
    jobs.apply(ftj("mine", nodes=1))
    jobs.apply(ftj("theirs", nodes=1))
    running(jobs, "mine")
    running(jobs, "theirs")
    ns = jobs.ns
    # Every worker in the namespace runs as the one ServiceAccount the operator created for it ...
    assert {p["spec"]["serviceAccountName"] for p in jobs.pods("mine") + jobs.pods("theirs")} == {"kubetune-worker"}

    def token(pod: str) -> str:
        """A token as the kubelet mounts it in `pod`: of its ServiceAccount, bound to the pod."""
        uid = cluster.kubectl("get", "pod", pod, "-n", ns, "-o", "jsonpath={.metadata.uid}").stdout.strip()
        return cluster.kubectl("create", "token", "kubetune-worker", "-n", ns, "--bound-object-kind=Pod",
                               f"--bound-object-name={pod}", f"--bound-object-uid={uid}").stdout.strip()

    base = f"/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs"
    progress = {"status": {"progress": {"step": 7, "totalSteps": 100}}}
    mine = token("mine-worker-0")
    assert _request(cluster, "PATCH", f"{base}/mine/status", mine, progress) == 200
    assert jobs.status("mine")["progress"]["step"] == 7
    # ... and the admission policy lets a pod write only the status of the job it works for.
    assert _request(cluster, "PATCH", f"{base}/theirs/status", mine, progress) == 403
    assert _request(cluster, "PATCH", f"{base}/theirs/status", token("theirs-worker-0"), progress) == 200
    unbound = cluster.kubectl("create", "token", "kubetune-worker", "-n", ns).stdout.strip()
    assert _request(cluster, "PATCH", f"{base}/mine/status", unbound, progress) == 403
    assert _request(cluster, "PATCH", f"{base}/mine", mine, {"spec": {"image": "evil"}}) == 403
    assert _request(cluster, "GET", f"/api/v1/namespaces/{ns}/secrets", mine) == 403
    who = f"--as=system:serviceaccount:{ns}:kubetune-worker"
    assert cluster.kubectl("auth", "can-i", "get", "secrets", "-n", ns, who, check=False).stdout.strip() == "no"


def test_deleting_a_worker_restarts_the_gang_for_free(operator, jobs: Jobs, cluster) -> None:
    jobs.apply(ftj("gang", nodes=2, runPolicy={"backoffLimit": 0}))
    running(jobs, "gang")
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in jobs.pods("gang")}
    cluster.kubectl("delete", "pod", "gang-worker-1", "-n", jobs.ns, "--wait=false")
    status = running(jobs, "gang", attempt=2)
    assert status["restarts"] == {"infrastructure": 1, "application": 0, "hang": 0}
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in jobs.pods("gang")}
    assert set(after) == set(before) and not set(after.values()) & set(before.values()), "every worker is new"
    assert any(e["reason"] == "Restarting" and "infrastructure" in e["message"] for e in jobs.events("gang"))


def test_trainer_failures_spend_the_backoff_limit_then_fail_the_job(operator, jobs: Jobs) -> None:
    jobs.apply(ftj("flaky", nodes=2, runPolicy={"backoffLimit": 1}))
    running(jobs, "flaky")
    jobs.terminate_worker("flaky-worker-1", 1, "error: CUDA out of memory")
    status = running(jobs, "flaky", attempt=2)
    assert status["restarts"] == {"infrastructure": 0, "application": 1, "hang": 0}

    jobs.terminate_worker("flaky-worker-0", 1, "error: dataset s3://datasets/x.jsonl not found")
    status = wait_for(lambda: (s := jobs.status("flaky")).get("phase") == "Failed" and s, what="flaky Failed")
    assert condition(status, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "dataset s3://datasets/x.jsonl not found" in status["message"]
    assert status["restarts"]["application"] == 1
    assert "completionTime" in status
    wait_for(lambda: all(p["status"].get("phase") == "Failed" or p["metadata"].get("deletionTimestamp")
                         for p in jobs.pods("flaky")), what="no worker left running")
    assert any(e["reason"] == "BackoffLimitExceeded" for e in jobs.events("flaky"))


def test_suspend_deletes_workers_and_resume_brings_them_back(operator, jobs: Jobs) -> None:
    jobs.apply(ftj("pausable", nodes=2))
    running(jobs, "pausable")
    jobs.patch_spec("pausable", {"runPolicy": {"suspend": True}})
    wait_for(lambda: jobs.status("pausable").get("phase") == "Suspended" and not jobs.pods("pausable"),
             what="Suspended with no pods")
    jobs.patch_spec("pausable", {"runPolicy": {"suspend": False}})
    status = running(jobs, "pausable")
    assert status["restarts"] == {"infrastructure": 0, "application": 0, "hang": 0}, "a suspension is not a restart"
    assert {"Suspended", "Resumed"} <= {e["reason"] for e in jobs.events("pausable")}


def test_active_deadline_fails_the_job(operator, jobs: Jobs) -> None:
    jobs.apply(ftj("slow", nodes=1, runPolicy={"activeDeadlineSeconds": 4}))
    status = wait_for(lambda: (s := jobs.status("slow")).get("phase") == "Failed" and s, timeout=30,
                      what="slow to fail by deadline")
    assert condition(status, "Failed")["reason"] == "DeadlineExceeded"
    wait_for(lambda: not [p for p in jobs.pods("slow") if not p["metadata"].get("deletionTimestamp")],
             what="the workers to be deleted")


def test_success_then_ttl_deletes_the_job_and_its_children(operator, jobs: Jobs, cluster) -> None:
    jobs.apply(ftj("done", nodes=2, runPolicy={"ttlSecondsAfterFinished": 3}))
    running(jobs, "done")
    for pod in ("done-worker-0", "done-worker-1"):
        jobs.terminate_worker(pod, 0)
    status = wait_for(lambda: (s := jobs.status("done")).get("phase") == "Succeeded" and s, what="done Succeeded")
    assert condition(status, "Succeeded")["status"] == "True"
    ns = jobs.ns
    wait_for(lambda: cluster.kubectl("get", "ftj", "done", "-n", ns, check=False).returncode != 0,
             timeout=30, what="the TTL to delete the job")
    wait_for(lambda: cluster.kubectl("get", "service,serviceaccount,pods", "-n", ns, "-l", "kubetune.io/job-name=done",
                                     "-o", "name").stdout.strip() == "", timeout=30,
             what="the garbage collector to delete the children")


def test_operator_metrics_count_jobs_and_restarts(operator, jobs: Jobs) -> None:
    jobs.apply(ftj("counted", nodes=1))
    running(jobs, "counted")
    text = operator.metrics()
    assert 'kubetune_jobs{phase="Running"}' in text
    assert "kubetune_reconcile_duration_seconds_count" in text
    assert "kubetune_api_requests_total" in text


def test_invalid_spec_past_admission_fails_with_the_field_and_no_pods(operator, jobs: Jobs, cluster) -> None:
    """An older, laxer CRD (say, not upgraded with the operator) let a bad spec in."""
    import yaml

    from kubetune_testbed import REPO

    crd_file = REPO / "crds" / "kubetune.io_finetunejobs.yaml"
    lax = yaml.safe_load(crd_file.read_text())
    version = lax["spec"]["versions"][0]
    version["schema"]["openAPIV3Schema"]["properties"]["spec"] = {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    version.pop("selectableFields", None)  # they name spec fields the lax schema no longer has
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(lax))
        bad = ftj("bad", nodes=1, training={"maxSteps": 10, "microBatchSize": 0})
        wait_for(lambda: cluster.kubectl("create", "-n", jobs.ns, "-f", "-", input=json.dumps(bad),
                                         check=False).returncode == 0, what="the lax CRD to admit the bad job")
        status = wait_for(lambda: (s := jobs.status("bad")).get("phase") == "Failed" and s, what="bad Failed")
    finally:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_file))
    assert condition(status, "Failed")["reason"] == "InvalidSpec"
    assert "spec.training.microBatchSize" in status["message"]
    assert jobs.pods("bad") == []
    assert any(e["reason"] == "InvalidSpec" for e in jobs.events("bad"))


def test_workers_that_never_start_make_the_job_stalled_without_spending_a_budget(operator, jobs: Jobs) -> None:
    # Three workers of 8 GPUs each on the two 8-GPU fake nodes: one can never be scheduled.
    jobs.apply(ftj("stuck", nodes=3, gpus=8, runPolicy={"startupDeadlineSeconds": 10, "backoffLimit": 0}))

    def stalled() -> dict[str, Any] | None:
        status = jobs.status("stuck")
        conds = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return status if conds.get("Stalled") == "True" else None

    status = wait_for(stalled, timeout=60, what="stuck Stalled")
    assert status["phase"] == "Pending"
    assert condition(status, "Stalled")["reason"] == "WorkersNotStarted"
    assert "startupDeadlineSeconds" in status["message"], status["message"]
    assert "Unschedulable" in status["message"] and "nvidia.com/gpu" in status["message"], status["message"]
    assert status["restarts"] == {"infrastructure": 0, "application": 0, "hang": 0}
    assert [e["reason"] for e in jobs.events("stuck") if e["type"] == "Warning"] == ["WorkersNotStarted"]
    assert len(jobs.pods("stuck")) == 3, "nothing deleted: the job waits for room"


def preflight_on_kwok(name: str, **spec: Any) -> dict[str, Any]:
    """A job whose preflight pod lands on a kwok node, where the test plays its kubelet."""
    return ftj(name, nodes=2, preflight={"enabled": True, "nodeSelector": FAKE_NODE_SELECTOR,
                                         "tolerations": [FAKE_NODE_TOLERATION]}, **spec)


def watch_pod_names(cluster: Any, namespace: str) -> subprocess.Popen[str]:
    """`kubectl get pods --watch` in `namespace`: every pod that ever exists there is printed."""
    return subprocess.Popen([str(cluster.local.bins.kube("kubectl")), "--kubeconfig", str(cluster.local.admin_kubeconfig),
                             "get", "pods", "-n", namespace, "--watch", "-o", "name"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def test_a_failed_preflight_fails_the_job_and_no_worker_pod_ever_exists(operator, jobs: Jobs, cluster) -> None:
    watch = watch_pod_names(cluster, jobs.ns)
    try:
        jobs.apply(preflight_on_kwok("checked"))
        status = wait_for(lambda: (s := jobs.status("checked")).get("phase") == "Pending" and s, what="Pending")
        assert condition(status, "Reconciling")["reason"] == "Preflight"
        pod = wait_for(lambda: next(iter(jobs.pods("checked")), None), what="the preflight pod")
        assert pod["metadata"]["name"] == "checked-preflight"
        resources = pod["spec"]["containers"][0]["resources"]
        assert resources == {"requests": {"cpu": "500m", "memory": "1Gi"}}  # no GPU
        assert pod["spec"]["automountServiceAccountToken"] is False
        bad = "s3://datasets/chat/train.jsonl:10000: not valid JSON (Expecting ',' delimiter at column 18)"
        jobs.terminate_worker("checked-preflight", 2, bad)
        status = wait_for(lambda: (s := jobs.status("checked")).get("phase") == "Failed" and s, what="Failed")
        assert condition(status, "Failed")["reason"] == "PreflightFailed"
        assert status["message"] == f"preflight failed: {bad}"
        assert {k: v for k, v in status["preflight"].items() if k != "completedAt"} == {"result": "Failed", "message": bad}
        assert any(e["reason"] == "PreflightFailed" for e in jobs.events("checked"))
        time.sleep(2)  # a worker created after the verdict would show up in the watch by now
    finally:
        watch.terminate()
        seen, _ = watch.communicate(timeout=10)
    assert set(seen.split()) == {"pod/checked-preflight"}


def test_a_passed_preflight_is_reported_and_its_workers_read_its_cache(operator, jobs: Jobs) -> None:
    jobs.apply(preflight_on_kwok("passed"))
    wait_for(lambda: jobs.pods("passed"), what="the preflight pod")
    report = {"result": "Succeeded", "message": "preflight passed: 12 records", "records": 12, "totalSteps": 100,
              "cacheUri": "s3://models/kubetune-cache/0123abcd/", "cached": False}
    jobs.terminate_worker("passed-preflight", 0, json.dumps(report))
    running(jobs, "passed")
    status = jobs.status("passed")
    recorded = dict(status["preflight"])
    assert recorded.pop("completedAt") and recorded == report
    workers = [p for p in jobs.pods("passed") if p["metadata"]["name"] != "passed-preflight"]
    assert len(workers) == 2
    for worker in workers:
        env = {e["name"]: e.get("value") for e in worker["spec"]["containers"][0]["env"]}
        assert env["KUBETUNE_DATA_CACHE_KEY"] == "0123abcd"
    # A gang restart does not run the preflight again.
    jobs.terminate_worker("passed-worker-1", 1, "error: CUDA out of memory")
    running(jobs, "passed", attempt=2)
    assert jobs.status("passed")["preflight"] == {**report, "completedAt": status["preflight"]["completedAt"]}
    assert [p["metadata"]["name"] for p in jobs.pods("passed")].count("passed-preflight") == 1
