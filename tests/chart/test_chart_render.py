"""The Helm chart as rendered: lint, values and schema, CRD copies, RBAC, the operator's pod.

No cluster: `helm lint` and `helm template` only. test_chart_install.py
installs the same chart and runs the operator with it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import yaml
from helmchart import (
    CHART,
    CI_VALUES,
    cluster_permissions,
    container_env,
    documented_names,
    find,
    helm,
    lease_permissions,
    lookup,
    namespaced_permissions,
    one,
    permissions,
    rbac_rules,
    render,
    render_text,
)

from kubetune_testbed import REPO


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return dict(json.loads((CHART / "values.schema.json").read_text()))


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def schema_leaves(schema: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The values' names down to where the schema stops naming keys (e.g. `resources` is one value)."""
    out: list[str] = []

    def walk(node: dict[str, Any], value: Any, prefix: str) -> None:
        props = node.get("properties")
        if props and node.get("additionalProperties") is False and isinstance(value, dict):
            for key, sub in value.items():
                assert key in props, f"{prefix}{key} is in values.yaml but not in values.schema.json"
                walk(props[key], sub, f"{prefix}{key}.")
        else:
            out.append(prefix.rstrip("."))

    walk(schema, values, "")
    return out


# ---------------------------------------------------------------- lint and schema
@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_helm_lint_is_clean(values_file) -> None:
    args = ["-f", str(values_file)] if values_file else []
    out = helm("lint", "--strict", str(CHART), *args).stdout
    assert "[WARNING]" not in out and "[ERROR]" not in out, out
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_every_value_is_documented_by_name_and_in_the_schema(schema, values) -> None:
    docs = documented_names((CHART / "values.yaml").read_text())
    names = schema_leaves(schema, values)
    undocumented = [n for n in names if n not in docs]
    assert not undocumented, f"values without a '# <name> -- ...' comment in values.yaml: {undocumented}"
    assert not set(docs) - set(names), f"documented names that are no values: {set(docs) - set(names)}"
    assert all(len(text) > 15 for text in docs.values())

    def unset(node: dict[str, Any], value: Any, prefix: str) -> list[str]:
        missing = []
        if node.get("additionalProperties") is False:
            for key, sub in node.get("properties", {}).items():
                if key == "global":  # Helm's shared values, never set by this chart
                    continue
                if not isinstance(value, dict) or key not in value:
                    missing.append(prefix + key)
                else:
                    missing += unset(sub, value[key], f"{prefix}{key}.")
        return missing

    assert not unset(schema, values, ""), "schema properties with no default in values.yaml"


def test_ci_values_files_exercise_every_value(schema, values) -> None:
    """Each documented value is changed from its default by at least one ci/*-values.yaml."""
    changed: set[str] = set()
    for path in CI_VALUES:
        override = yaml.safe_load(path.read_text())
        for name in schema_leaves(schema, values):
            got = lookup(override, name)
            if got is not KeyError and got != lookup(values, name):
                changed.add(name)
    assert set(schema_leaves(schema, values)) - changed == set()


@pytest.mark.parametrize(("values", "message"), [
    ({"replicaCount": -1}, "at '/replicaCount': minimum: got -1, want 0"),
    ({"leaderElection": {"leaseDurationSeconds": 0}}, "at '/leaderElection/leaseDurationSeconds': minimum"),
    ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "at '/podDisruptionBudget/maxUnavailable'"),
    ({"operator": {"logLevel": "TRACE"}}, "at '/operator/logLevel': value must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'"),
    ({"operator": {"resyncSeconds": 0}}, "at '/operator/resyncSeconds': exclusiveMinimum"),
    ({"watchNamespaces": ["ML_Team"]}, "at '/watchNamespaces/0'"),
    ({"metrics": {"port": 70000}}, "at '/metrics/port': maximum"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
    ({"replicas": 1}, "additional properties 'replicas' not allowed"),
])
def test_invalid_values_fail_with_the_schema_message(values: dict[str, Any], message: str) -> None:
    result = helm("template", "kt", str(CHART), "--set-json", *[f"{k}={json.dumps(v)}" for k, v in values.items()],
                  check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(("values", "message"), [
    (["health.port=8080"], "metrics.port and health.port must differ"),
    (["leaderElection.enabled=false"], "replicaCount > 1 needs leaderElection.enabled"),
    (["leaderElection.renewDeadlineSeconds=15"],
     "leaderElection: retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds must hold"),
])
def test_values_that_cannot_work_together_fail_with_what_to_change(values: list[str], message: str) -> None:
    result = helm("template", "kt", str(CHART), *[a for v in values for a in ("--set", v)], check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


# ---------------------------------------------------------------- CRDs
def test_the_chart_copies_of_the_crds_are_the_repository_files() -> None:
    """crds/ is generated from api/ (make crds copies it into the chart): a stale copy fails here."""
    pairs = [(REPO / f"crds/{name}", CHART / f"files/crds/{name}")
             for name in ("kubetune.io_finetunejobs.yaml", "kubetune.io_finetunesweeps.yaml")]
    for source, copy in pairs:
        assert copy.read_bytes() == source.read_bytes(), f"{copy} differs from {source}: run `make crds`"
    assert {p.name for p in (REPO / "crds").glob("*.yaml")} == {s.name for s, _ in pairs}
    assert not (CHART / "crds").exists(), "the chart installs no CRD of kopf's (leader election needs none)"


@pytest.mark.parametrize("plural", ["finetunejobs", "finetunesweeps"])
def test_the_rendered_crd_is_the_repository_crd_plus_labels_and_keep(default, plural: str) -> None:
    source = yaml.safe_load((REPO / f"crds/kubetune.io_{plural}.yaml").read_text())
    # The chart adds labels and annotations as text under the top-level metadata.
    assert source["metadata"] == {"name": f"{plural}.kubetune.io"}
    rendered = one(default, "CustomResourceDefinition", f"{plural}.kubetune.io")
    meta = rendered["metadata"]
    assert meta.pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert meta.pop("labels")["app.kubernetes.io/managed-by"] == "Helm"
    assert rendered == source


def test_the_chart_installs_the_worker_status_policy_as_its_file_says(default) -> None:
    """The admission policy that keeps each worker to its own job's status: rendered as the plain file that
    the tests (and users running the operator without the chart) apply with kubectl."""
    expected = list(yaml.safe_load_all((CHART / "files/worker-status-policy.yaml").read_text()))
    rendered = [one(default, m["kind"], m["metadata"]["name"]) for m in expected]
    assert rendered == expected


def test_crd_options() -> None:
    crds = find(render(values={"crds": {"keep": False}}), "CustomResourceDefinition")
    assert len(crds) == 2 and all("annotations" not in c["metadata"] for c in crds)
    assert not find(render(values={"crds": {"install": False}}), "CustomResourceDefinition")


# ---------------------------------------------------------------- the operator's pod
def test_the_operator_runs_as_two_hardened_replicas_that_roll(default) -> None:
    deployment = one(default, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # A new replica is Ready before an old one goes: a standby is always there.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert "command" not in container and "args" not in container  # the image's entrypoint
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["image"] == "ghcr.io/kubetune/operator:0.1.0"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container_env(deployment) == {
        "KUBETUNE_NAMESPACES": "", "KUBETUNE_LEASE_NAME": "kt-kubetune", "KUBETUNE_LEASE_NAMESPACE": "kubetune-system",
        "KUBETUNE_LEASE_DURATION_SECONDS": "15", "KUBETUNE_RENEW_DEADLINE_SECONDS": "10",
        "KUBETUNE_RETRY_PERIOD_SECONDS": "2",
        "KUBETUNE_METRICS_PORT": "8080", "KUBETUNE_HEALTH_PORT": "8081", "KUBETUNE_LOG_LEVEL": "INFO",
        "KUBETUNE_WORKERS": "8", "KUBETUNE_API_QPS": "50", "KUBETUNE_API_BURST": "100",
        "KUBETUNE_RESYNC_SECONDS": "5", "KUBETUNE_TRAINER_IMAGE": "ghcr.io/kubetune/trainer:0.1.0",
        "KUBETUNE_KUEUE": "false",
    }
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    service = one(default, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    budget = one(default, "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}
    assert not find(render(values={"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget")


def test_every_setting_of_the_operator_is_set_by_the_chart(default) -> None:
    """Each KUBETUNE_* variable that settings.py reads has a value behind it."""
    from kubetune_operator import settings

    documented = {line.split()[0] for line in settings.__doc__.splitlines() if line.strip().startswith("KUBETUNE_")}
    assert documented - set(container_env(one(default, "Deployment"))) == set()


def test_the_charts_defaults_are_the_operators_defaults(default, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune_operator.settings import Settings

    for name in [n for n in os.environ if n.startswith("KUBETUNE_")]:
        monkeypatch.delenv(name)
    ours, theirs = container_env(one(default, "Deployment")), Settings.from_env()
    assert ours["KUBETUNE_LOG_LEVEL"] == theirs.log_level
    assert int(ours["KUBETUNE_WORKERS"]) == theirs.workers
    assert float(ours["KUBETUNE_API_QPS"]) == theirs.api_qps
    assert int(ours["KUBETUNE_API_BURST"]) == theirs.api_burst
    assert float(ours["KUBETUNE_RESYNC_SECONDS"]) == theirs.resync_seconds
    assert int(ours["KUBETUNE_METRICS_PORT"]) == theirs.metrics_port
    assert int(ours["KUBETUNE_HEALTH_PORT"]) == theirs.health_port
    assert ours["KUBETUNE_TRAINER_IMAGE"] == theirs.trainer_image
    assert int(ours["KUBETUNE_LEASE_DURATION_SECONDS"]) == theirs.lease_duration_seconds
    assert float(ours["KUBETUNE_RENEW_DEADLINE_SECONDS"]) == theirs.renew_deadline_seconds
    assert float(ours["KUBETUNE_RETRY_PERIOD_SECONDS"]) == theirs.retry_period_seconds


def test_settings_follow_the_values() -> None:
    manifests = render(values={"operator": {"logLevel": "DEBUG", "resyncSeconds": 5},
                               "watchNamespaces": ["a", "b"], "metrics": {"enabled": False},
                               "leaderElection": {"enabled": False}, "replicaCount": 1,
                               "trainer": {"image": {"tag": "0.2.0"}}})
    deployment = one(manifests, "Deployment")
    env = container_env(deployment)
    assert env["KUBETUNE_LOG_LEVEL"] == "DEBUG" and env["KUBETUNE_RESYNC_SECONDS"] == "5"
    assert env["KUBETUNE_NAMESPACES"] == "a,b" and env["KUBETUNE_METRICS_PORT"] == "0"
    assert env["KUBETUNE_TRAINER_IMAGE"] == "ghcr.io/kubetune/trainer:0.2.0"
    # Without leader election: --standalone after the image's entrypoint, and no Lease, no Lease permission.
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == ["--standalone"]
    assert not [name for name in env if name.startswith("KUBETUNE_LEASE")]
    assert not find(manifests, "Service")
    assert not {r for r in permissions(rbac_rules(manifests)) if r[0] == "coordination.k8s.io"}
    digest = "sha256:" + "ab" * 32
    pinned = one(render(values={"image": {"digest": digest}}), "Deployment")
    assert pinned["spec"]["template"]["spec"]["containers"][0]["image"] == f"ghcr.io/kubetune/operator@{digest}"


# ---------------------------------------------------------------- RBAC
def test_cluster_wide_rbac_is_exactly_what_the_operator_uses(default) -> None:
    (role,) = find(default, "ClusterRole")
    assert permissions(role["rules"]) == cluster_permissions()
    binding = one(default, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    subject = [{"kind": "ServiceAccount", "name": "kt-kubetune", "namespace": "kubetune-system"}]
    assert binding["subjects"] == subject
    # Its Lease: a Role in the release's namespace, naming the one Lease it renews.
    (lease_role,) = find(default, "Role")
    assert lease_role["metadata"] == {**lease_role["metadata"], "name": "kt-kubetune-leader-election",
                                      "namespace": "kubetune-system"}
    assert permissions(lease_role["rules"]) == lease_permissions("kt-kubetune")
    lease_binding = one(default, "RoleBinding")
    assert lease_binding["roleRef"]["name"] == "kt-kubetune-leader-election" and lease_binding["subjects"] == subject


def test_single_namespace_rbac_has_no_cluster_wide_permission() -> None:
    manifests = render(values={"watchNamespaces": ["team-a", "team-b"]})
    assert not find(manifests, "ClusterRole") and not find(manifests, "ClusterRoleBinding")
    for kind in ("Role", "RoleBinding"):
        assert sorted(m["metadata"]["namespace"] for m in find(manifests, kind)) == [
            "kubetune-system", "team-a", "team-b"], kind
    for role in find(manifests, "Role"):
        expected = (lease_permissions("kt-kubetune") if role["metadata"]["namespace"] == "kubetune-system"
                    else namespaced_permissions())
        assert permissions(role["rules"]) == expected
    for binding in find(manifests, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == "kubetune-system"


@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_no_secret_access_and_no_wildcards_anywhere(values_file) -> None:
    rules = rbac_rules(render(values_files=(values_file,) if values_file else ()))
    for rule in rules:
        assert "secrets" not in rule.get("resources", []), rule
        assert "*" not in rule.get("resources", []) + rule["verbs"] + rule.get("apiGroups", []), rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


def test_rbac_and_service_account_can_be_left_to_the_user() -> None:
    manifests = render(values={"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}})
    assert not rbac_rules(manifests) and not find(manifests, "ServiceAccount")
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ops"


# ---------------------------------------------------------------- metrics
def test_service_monitor_scrapes_the_metrics_service() -> None:
    manifests = render(values={"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    monitor = one(manifests, "ServiceMonitor")
    service = one(manifests, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["kubetune-system"]}


def test_render_is_deterministic() -> None:
    assert render_text() == render_text()


def test_kueue_rbac_only_when_the_integration_is_on(default) -> None:
    def kueue_rules(rendered: Any) -> list[Any]:
        role = one(rendered, "ClusterRole")
        return [r for r in role["rules"] if "kueue.x-k8s.io" in r["apiGroups"]]

    assert kueue_rules(default) == []
    on = render(values={"kueue": {"enabled": True}})
    rules = {tuple(r["resources"]): set(r["verbs"]) for r in kueue_rules(on)}
    assert rules[("workloads",)] >= {"create", "get", "list", "watch", "patch", "delete"}
    assert rules[("workloads/status",)] >= {"patch"}
    assert container_env(one(on, "Deployment"))["KUBETUNE_KUEUE"] == "true"
