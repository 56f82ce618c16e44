"""The chart installed into the local cluster, and its operator running as users run it.

The cluster-wide install runs the chart's operator pods on the node agent's
node: the image's entrypoint, in-cluster credentials of the chart's
ServiceAccount, probes, two replicas electing a leader through a Lease. Jobs
(on kwok's nodes) are applied by server-side apply, as Argo CD or Flux would,
and watched through every phase; the Argo CD and Flux health checks of
docs/gitops.md are run on each version seen. The single-namespace install runs
the operator as a local process with the Deployment's environment and a token
of the chart's ServiceAccount.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartcluster import (
    GITOPS_MANAGER,
    ChartOperator,
    GitOpsJobs,
    as_can_i_rows,
    can_i_list,
    ftj,
    rbac_denials,
    token_kubeconfig,
)
from gitopscheck import assert_health_of
from harness import CLUSTER_MANIFESTS, FAKE_NODE_SELECTOR, Recorder, wait_for
from helmchart import (
    CHART,
    CI_VALUES,
    cluster_permissions,
    container_env,
    helm,
    lease_permissions,
    namespaced_permissions,
    render_text,
    value_args,
)

from kubetune_api.constants import REASON_CREATING_WORKERS
from kubetune_testbed.nodes import FAKE_NODE_TOLERATION, NODE_AGENT_NODE
from kubetune_testbed.ports import free_port

pytestmark = pytest.mark.cluster

SERVICE_MONITOR_CRD = Path(__file__).parent / "testdata" / "monitoring.coreos.com_servicemonitors.yaml"


def install_values() -> dict[str, Any]:
    """What a test install sets whose operator a test runs as a local process: the operator's
    pods go to a kwok node (where they run nothing, so they never compete with that process),
    resyncs are quick, and the ports are free ones, since the process shares this machine's network."""
    return {"nodeSelector": FAKE_NODE_SELECTOR, "tolerations": [FAKE_NODE_TOLERATION], "operator": {"resyncSeconds": 2},
            "metrics": {"port": free_port()}, "health": {"port": free_port()}}


@dataclass
class Release:
    cluster: Any
    name: str
    namespace: str
    values: dict[str, Any]
    notes: str = ""
    tmp: Path = field(default_factory=Path)

    def helm(self, *args: str, check: bool = True) -> str:
        return helm(*args, "--namespace", self.namespace, env=self.cluster.env, check=check).stdout

    def install(self, *extra: str) -> None:
        out = self.helm("install", self.name, str(CHART), "--take-ownership", "--wait", "--timeout", "90s",
                        *value_args(values=self.values), *extra)
        self.notes = out.split("NOTES:", 1)[1]

    @property
    def fullname(self) -> str:
        return f"{self.name}-kubetune"

    def deployment(self) -> dict[str, Any]:
        out = self.cluster.kubectl("get", "deployment", self.fullname, "-n", self.namespace, "-o", "json")
        return dict(json.loads(out.stdout))

    def pods(self) -> list[dict[str, Any]]:
        """The operator's pods, less those being deleted."""
        out = self.cluster.kubectl("get", "pods", "-n", self.namespace, "-l", f"app.kubernetes.io/instance={self.name}",
                                   "-o", "json")
        return [p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]

    def leader(self) -> str:
        """The pod that holds the Lease ("" when none does)."""
        out = self.cluster.kubectl("get", "lease", self.fullname, "-n", self.namespace, "-o",
                                   "jsonpath={.spec.holderIdentity}", check=False)
        return out.stdout.split("_", 1)[0] if out.returncode == 0 else ""

    def logs(self) -> str:
        """`kubectl logs` of every operator pod (and of its previous container, if it restarted)."""
        text = ""
        for pod in self.pods():
            for previous in ("--previous=true", "--previous=false"):
                out = self.cluster.kubectl("logs", "-n", self.namespace, pod["metadata"]["name"], previous, check=False)
                text += out.stdout if out.returncode == 0 else ""
        return text

    def operator(self, tmp: Path) -> ChartOperator:
        """The operator with the Deployment's environment and the chart ServiceAccount's token."""
        kubeconfig = token_kubeconfig(self.cluster, self.namespace, self.fullname, tmp / "operator.kubeconfig")
        return ChartOperator(container_env(self.deployment()), kubeconfig, tmp / "operator.log")

    def rows(self, tmp: Path, service_account: str, namespace: str, sa_namespace: str | None = None) -> set:
        """`kubectl auth can-i --list` in `namespace` as `service_account`, less what every
        ServiceAccount may do (the default ServiceAccount's rows: discovery, self-reviews)."""
        sa_ns = sa_namespace or self.namespace
        sa = can_i_list(self.cluster, token_kubeconfig(self.cluster, sa_ns, service_account, tmp / "sa.kubeconfig"),
                        namespace)
        base = can_i_list(self.cluster, token_kubeconfig(self.cluster, self.namespace, "default",
                                                         tmp / "default.kubeconfig"), namespace)
        return sa - base


def new_namespace(cluster: Any, prefix: str, *labels: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    if labels:
        cluster.kubectl("label", "namespace", name, *labels)
    wait_for(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
             timeout=30, what=f"the default ServiceAccount of {name}")
    return name


def restore_crds(cluster: Any) -> None:
    """Leave the CRDs installed and Established, and the worker status policy (which `helm uninstall`
    deleted) in place, for the tests after these (the `crd` fixture's state)."""
    for path in CLUSTER_MANIFESTS:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.kubetune.io")


@pytest.fixture(scope="module")
def release(cluster: Any, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """A cluster-wide install with the default values (but a quicker resync) in a namespace
    that enforces the `restricted` Pod Security Standard; its operator really runs."""
    ns = new_namespace(cluster, "kubetune", "pod-security.kubernetes.io/enforce=restricted")
    rel = Release(cluster, f"kt{secrets.token_hex(2)}", ns, {"operator": {"resyncSeconds": 2}},
                  tmp=tmp_path_factory.mktemp("release"))
    try:
        rel.install()
        yield rel
    finally:
        rel.helm("uninstall", rel.name, check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false")
        restore_crds(cluster)


# ---------------------------------------------------------------- the cluster-wide install
def test_helm_install_wait_gives_two_ready_operator_pods_one_holding_the_lease(release: Release, cluster: Any) -> None:
    """Admitted under the restricted Pod Security Standard, run by the node agent from the image's
    entrypoint with in-cluster credentials; `helm install --wait` returned once both were Ready."""
    deployment = release.deployment()
    assert deployment["status"]["availableReplicas"] == deployment["status"]["readyReplicas"] == 2
    pods = release.pods()
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] == NODE_AGENT_NODE and pod["spec"]["serviceAccountName"] == release.fullname
        assert pod["status"]["phase"] == "Running"
        assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    leader = wait_for(release.leader, timeout=30, what="a replica to hold the Lease")
    assert leader in {p["metadata"]["name"] for p in pods}
    standby = next(p["metadata"]["name"] for p in pods if p["metadata"]["name"] != leader)
    standby_log = cluster.kubectl("logs", "-n", release.namespace, standby).stdout
    assert f"standing by: the Lease {release.namespace}/{release.fullname} is held by {leader}_" in standby_log
    crd = json.loads(cluster.kubectl("get", "crd", "finetunejobs.kubetune.io", "-o", "json").stdout)
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name


def test_the_notes_first_job_is_accepted_by_the_api_server(release: Release, cluster: Any, namespace: str) -> None:
    assert f"kubectl -n {release.namespace} rollout status deployment/{release.fullname}" in release.notes
    body = release.notes.split("<<'EOF'\n", 1)[1].split("\n  EOF", 1)[0]
    job = yaml.safe_load("\n".join(line[2:] for line in body.splitlines()))
    assert job["kind"] == "FineTuneJob"
    cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(job))


def test_the_operator_service_account_may_do_exactly_what_the_operator_uses(
        release: Release, namespace: str) -> None:
    rows = release.rows(release.tmp, release.fullname, namespace)
    assert rows == as_can_i_rows(cluster_permissions())
    assert not [r for r in rows if "secrets" in r[0]]
    # In its own namespace, also its Lease: create one, read and renew only its own.
    home = release.rows(release.tmp, release.fullname, release.namespace)
    assert home == as_can_i_rows(cluster_permissions() | lease_permissions(release.fullname))


def test_the_operator_as_its_service_account_runs_jobs_through_their_lives(
        release: Release, cluster: Any, namespace: str, tmp_path: Path) -> None:
    jobs = GitOpsJobs(cluster, namespace)
    recorder = Recorder(cluster, namespace, tmp_path / "watch.json")
    try:
        manifest = ftj("tuned", nodes=2, gpus=1)
        applied = jobs.apply(manifest)
        status = jobs.running("tuned")
        assert status["restarts"] == {"infrastructure": 0, "application": 0, "hang": 0}
        assert_untouched(applied, jobs.get("tuned"))
        for kind, name in [("serviceaccount", "kubetune-worker"), ("role", "kubetune-worker"),
                           ("rolebinding", "kubetune-worker"), ("service", "tuned")]:
            cluster.kubectl("get", kind, name, "-n", namespace)
        # The workers may read and patch FineTuneJob status and nothing else (the chart's admission policy
        # narrows the patch to a pod's own job: tests/operator/test_operator_kwok.py).
        rows = release.rows(tmp_path, "kubetune-worker", namespace, sa_namespace=namespace)
        assert rows == {("finetunejobs.kubetune.io/status", "", "", "get"),
                        ("finetunejobs.kubetune.io/status", "", "", "patch")}

        # A worker lost: the whole gang restarts.
        cluster.kubectl("delete", "pod", "tuned-worker-1", "-n", namespace, "--wait=false")
        status = jobs.running("tuned", attempt=2)
        assert status["restarts"] == {"infrastructure": 1, "application": 0, "hang": 0}
        assert_untouched(applied, jobs.get("tuned"))

        # Suspend and resume through Git.
        manifest["spec"]["runPolicy"] = {"suspend": True}
        applied = jobs.apply(manifest)
        wait_for(lambda: jobs.status("tuned").get("phase") == "Suspended" and not jobs.pods("tuned"),
                 what="tuned Suspended without workers")
        assert_untouched(applied, jobs.get("tuned"))
        manifest["spec"]["runPolicy"] = {"suspend": False}
        applied = jobs.apply(manifest)
        jobs.running("tuned", attempt=2)

        # Every worker finishes: Succeeded.
        for pod in ("tuned-worker-0", "tuned-worker-1"):
            jobs.terminate_worker(pod, 0)
        jobs.phase("tuned", "Succeeded")
        assert_untouched(applied, jobs.get("tuned"))
        assert_only_status_written(jobs.get("tuned", managed_fields=True))
        assert jobs.drift("tuned") == "", "the GitOps tool would see drift"
        assert {"CreatingWorkers", "WorkersRunning", "Suspended", "Resumed"} <= jobs.event_reasons("tuned")

        # A trainer error with no retries left: Failed, then deleted after its TTL.
        jobs.apply(ftj("doomed", nodes=1, gpus=1, runPolicy={"backoffLimit": 0, "ttlSecondsAfterFinished": 2}))
        jobs.running("doomed")
        jobs.terminate_worker("doomed-worker-0", 1, "kubetune: dataset line 7: not JSON")
        jobs.phase("doomed", "Failed")
        wait_for(lambda: not jobs.exists("doomed"), timeout=30, what="the TTL to delete doomed")
    finally:
        seen = recorder.stop()
    # `kubectl logs` of the operator's pods: what it did, and no request refused.
    log = release.logs()
    assert f"{namespace}/tuned: {REASON_CREATING_WORKERS}" in log and f"{namespace}/tuned: Restarting" in log
    assert not rbac_denials(log), rbac_denials(log)
    assert not [line for line in log.splitlines() if namespace in line and "Forbidden" in line]
    assert all(p["status"]["containerStatuses"][0]["restartCount"] == 0 for p in release.pods())

    # The Argo CD and Flux health checks on every version of the jobs seen.
    phases = {assert_health_of(obj) for obj in seen}
    assert {"Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed"} <= phases, phases


def assert_untouched(applied: dict[str, Any], now: dict[str, Any]) -> None:
    """The job's spec and metadata are exactly as applied."""
    def meta(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj["metadata"].items() if k not in ("resourceVersion", "managedFields")}

    assert now["spec"] == applied["spec"]
    assert meta(now) == meta(applied)
    assert "finalizers" not in now["metadata"]


def assert_only_status_written(job: dict[str, Any]) -> None:
    """Every field manager but the applier owns only status: the operator keeps no bookkeeping on a job."""
    managers = set()
    for entry in job["metadata"]["managedFields"]:
        if entry["manager"] == GITOPS_MANAGER:
            continue
        managers.add(entry["manager"])
        fields = entry["fieldsV1"]
        if entry.get("subresource") == "status":
            assert set(fields) == {"f:status"}, entry
            continue
        raise AssertionError(f"{entry['manager']} wrote more than the status: {entry}")
    assert managers, "the operator wrote nothing?"


def test_helm_upgrade_rolls_the_operator_without_touching_running_workers(
        release: Release, cluster: Any, namespace: str) -> None:
    jobs = GitOpsJobs(cluster, namespace)
    jobs.apply(ftj("steady", nodes=2, gpus=1))
    jobs.running("steady")
    workers = {p["metadata"]["uid"] for p in jobs.pods("steady")}
    old_pods = {p["metadata"]["uid"] for p in release.pods()}
    release.helm("upgrade", release.name, str(CHART), "--reuse-values", "--wait", "--timeout", "120s",
                 "--set", "operator.logLevel=DEBUG", "--set", "operator.workers=4",
                 "--set", "trainer.image.tag=0.1.1", "--set", "resources.limits.memory=768Mi",
                 "--set", "metrics.service.port=9090")
    deployment = release.deployment()
    env = container_env(deployment)
    assert env["KUBETUNE_LOG_LEVEL"] == "DEBUG" and env["KUBETUNE_WORKERS"] == "4"
    assert env["KUBETUNE_TRAINER_IMAGE"] == "ghcr.io/kubetune/trainer:0.1.1"
    assert env["KUBETUNE_RESYNC_SECONDS"] == "2", "--reuse-values keeps the earlier values"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "768Mi"
    service = json.loads(cluster.kubectl("get", "service", f"{release.fullname}-metrics", "-n", release.namespace,
                                         "-o", "json").stdout)
    assert service["spec"]["ports"][0]["port"] == 9090
    # Rolled: two new replicas, one of them leading; the job's workers never touched.
    new_pods = wait_for(lambda: len(pods := release.pods()) == 2 and pods, timeout=60, what="the old replicas to go")
    assert not old_pods & {p["metadata"]["uid"] for p in new_pods}
    wait_for(lambda: release.leader() in {p["metadata"]["name"] for p in new_pods}, timeout=30,
             what="a new replica to hold the Lease")
    jobs.apply(ftj("after-upgrade", nodes=1, gpus=1))
    jobs.running("after-upgrade")  # the new leader acts
    assert {p["metadata"]["uid"] for p in jobs.pods("steady")} == workers
    status = jobs.status("steady")
    assert status["phase"] == "Running" and status["restarts"] == {"infrastructure": 0, "application": 0, "hang": 0}
    # An invalid upgrade fails on the schema and leaves the release as it was.
    failed = helm("upgrade", release.name, str(CHART), "--namespace", release.namespace, "--reuse-values",
                  "--set", "operator.logLevel=VERBOSE", env=cluster.env, check=False)
    assert failed.returncode != 0 and "at '/operator/logLevel': value must be one of" in failed.stderr
    history = json.loads(release.helm("history", release.name, "-o", "json"))
    assert [h["revision"] for h in history] == [1, 2] and history[-1]["status"] == "deployed"


def test_helm_uninstall_keeps_the_crd_and_the_jobs(release: Release, cluster: Any, namespace: str) -> None:
    GitOpsJobs(cluster, namespace).apply(ftj("keeper", nodes=1))
    out = release.helm("uninstall", release.name, "--wait")
    assert "kept due to the resource policy" in out and "finetunejobs.kubetune.io" in out
    cluster.kubectl("get", "crd", "finetunejobs.kubetune.io")
    cluster.kubectl("get", "ftj", "keeper", "-n", namespace)
    for kind, name in [("clusterrole", release.fullname), ("clusterrolebinding", release.fullname)]:
        assert cluster.kubectl("get", kind, name, check=False).returncode != 0, f"{kind} {name} left behind"
    left = cluster.kubectl("get", "deployment,serviceaccount,service,role,rolebinding,poddisruptionbudget",
                           "-n", release.namespace, "-l", f"app.kubernetes.io/instance={release.name}",
                           "-o", "name").stdout
    assert left.strip() == ""


# ---------------------------------------------------------------- other installs
def test_invalid_values_fail_at_helm_install_with_the_schema_message(cluster: Any, namespace: str) -> None:
    for values, message in [({"replicaCount": -1}, "at '/replicaCount': minimum: got -1, want 0"),
                            ({"operator": {"logLevel": "TRACE"}},
                             "at '/operator/logLevel': value must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'")]:
        result = helm("install", "invalid", str(CHART), "--namespace", namespace, *value_args(values=values),
                      env=cluster.env, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr
    assert helm("list", "--namespace", namespace, "-q", env=cluster.env).stdout.strip() == ""


@pytest.fixture(scope="module")
def validation_targets(cluster: Any, crd: None) -> Iterator[str]:
    """A namespace to validate into, the namespaces ci/namespaced-values.yaml names, and the
    ServiceMonitor CRD (for ci/servicemonitor-values.yaml)."""
    ns = new_namespace(cluster, "chart-validation")
    made = [n for n in ("ml-team-a", "ml-team-b")
            if cluster.kubectl("create", "namespace", n, check=False).returncode == 0]
    had_monitor_crd = cluster.kubectl("get", "crd", "servicemonitors.monitoring.coreos.com", check=False).returncode == 0
    if not had_monitor_crd:
        cluster.kubectl("apply", "--server-side", "-f", str(SERVICE_MONITOR_CRD))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/servicemonitors.monitoring.coreos.com")
    yield ns
    for name in [ns, *made]:
        cluster.kubectl("delete", "namespace", name, "--wait=false")
    if not had_monitor_crd:
        cluster.kubectl("delete", "crd", "servicemonitors.monitoring.coreos.com", "--wait=false")


@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_rendered_manifests_pass_the_api_servers_validation(values_file, validation_targets: str, cluster: Any) -> None:
    """Server-side dry run with strict field validation: unknown or misplaced fields fail.
    Every namespaced object of the chart names its namespace (as `helm template | kubectl
    apply` in a GitOps pipeline needs)."""
    text = render_text((values_file,) if values_file else (), namespace=validation_targets, include_crds=True)
    out = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "--validate=strict",
                          "--field-manager=chart-validation", "-f", "-", input=text)
    assert "(server dry run)" in out.stdout


def test_single_namespace_install_runs_only_its_namespaces_jobs(
        cluster: Any, crd: None, namespace: str, tmp_path: Path) -> None:
    rel_ns = new_namespace(cluster, "kubetune-ns")
    other = new_namespace(cluster, "elsewhere")
    rel = Release(cluster, f"kn{secrets.token_hex(2)}", rel_ns,
                  {**install_values(), "watchNamespaces": [namespace], "crds": {"install": False}})
    try:
        rel.install()
        assert f"these namespaces only: {namespace}" in rel.notes
        assert cluster.kubectl("get", "clusterrole,clusterrolebinding", "-l", f"app.kubernetes.io/instance={rel.name}",
                               "-o", "name").stdout.strip() == ""
        assert rel.rows(tmp_path, rel.fullname, namespace) == as_can_i_rows(namespaced_permissions())
        assert rel.rows(tmp_path, rel.fullname, rel_ns) == as_can_i_rows(lease_permissions(rel.fullname))
        assert rel.rows(tmp_path, rel.fullname, other) == set()

        mine, theirs = GitOpsJobs(cluster, namespace), GitOpsJobs(cluster, other)
        operator = rel.operator(tmp_path).start()
        try:
            mine.apply(ftj("inside", nodes=1))
            theirs.apply(ftj("outside", nodes=1))
            # kopf's own handlers start only once it has given up listing namespaces (about a
            # minute of retries on 403); until then the resync loop alone moves the job.
            mine.running("inside", timeout=120)
            time.sleep(3)  # more than one resync round
            assert theirs.status("outside") == {} and theirs.pods("outside") == []
            assert rel.leader(), "the operator holds its Lease, in the release's namespace"
        finally:
            log = operator.stop()
        # kopf first tries to list and watch namespaces and CRDs (cluster-wide), is refused and
        # falls back to the namespaces it was given; nothing else may be refused.
        assert rbac_denials(log) <= {(verb, resource, "cluster") for verb in ("list", "watch")
                                     for resource in ("namespaces", "customresourcedefinitions")}
    finally:
        helm("uninstall", rel.name, "--namespace", rel_ns, env=cluster.env, check=False)
        cluster.kubectl("delete", "namespace", rel_ns, other, "--wait=false")


def test_uninstall_without_keep_deletes_the_crd(cluster: Any, crd: None) -> None:
    """crds.keep switched off by an upgrade: the next uninstall deletes the CRD (and every job)."""
    ns = new_namespace(cluster, "kubetune-nokeep")
    rel = Release(cluster, f"kd{secrets.token_hex(2)}", ns, {**install_values(), "replicaCount": 0})

    def keep_annotation() -> str | None:
        crd_doc = json.loads(cluster.kubectl("get", "crd", "finetunejobs.kubetune.io", "-o", "json").stdout)
        return crd_doc["metadata"].get("annotations", {}).get("helm.sh/resource-policy")

    try:
        # As on a fresh cluster: an earlier release's keep annotation stays on a CRD a new
        # release adopts (Helm's three-way merge keeps what it did not write itself).
        cluster.kubectl("annotate", "crd", "finetunejobs.kubetune.io", "helm.sh/resource-policy-")
        rel.install()
        assert keep_annotation() == "keep"
        rel.helm("upgrade", rel.name, str(CHART), "--reuse-values", "--set", "crds.keep=false")
        assert keep_annotation() is None
        rel.helm("uninstall", rel.name, "--wait")
        wait_for(lambda: cluster.kubectl("get", "crd", "finetunejobs.kubetune.io", check=False).returncode != 0,
                 timeout=60, what="the FineTuneJob CRD to be deleted")
    finally:
        helm("uninstall", rel.name, "--namespace", ns, env=cluster.env, check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false")
        restore_crds(cluster)
