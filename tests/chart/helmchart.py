"""Helpers for the chart's tests: helm, rendered manifests, values.yaml and its schema.

Imported by bare name from the tests in this folder (pytest puts the folder on
sys.path), as tests/operator/harness.py is.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kubetune_api import Manifest
from kubetune_testbed import REPO
from kubetune_testbed.binaries import Binaries, cache_dir, versions

CHART = REPO / "charts" / "kubetune"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))

Permission = tuple[str, str, str, str]  # (apiGroup, resource, resourceName or "", verb)

# What the operator calls, and kopf for it (templates/_rbac.tpl says why each is needed).
OPERATOR_PERMISSIONS: set[Permission] = {
    *{("kubetune.io", "finetunejobs", "", v) for v in ("get", "list", "watch", "patch", "delete", "create")},
    *{("kubetune.io", "finetunesweeps", "", v) for v in ("get", "list", "watch", "patch")},
    ("kubetune.io", "finetunesweeps/status", "", "patch"),
    ("kubetune.io", "finetunesweeps/finalizers", "", "update"),
    *{("kubetune.io", "finetunejobs/status", "", v) for v in ("get", "patch")},
    ("kubetune.io", "finetunejobs/finalizers", "", "update"),
    *{("", "pods", "", v) for v in ("create", "list", "watch", "delete")},
    ("", "services", "", "create"),
    ("", "serviceaccounts", "", "create"),
    ("rbac.authorization.k8s.io", "roles", "", "create"),
    ("rbac.authorization.k8s.io", "rolebindings", "", "create"),
    ("", "events", "", "create"),
}


def cluster_permissions() -> set[Permission]:
    """The ClusterRole of a cluster-wide install: the operator's rules and kopf's CRD watch."""
    return OPERATOR_PERMISSIONS | {
        ("apiextensions.k8s.io", "customresourcedefinitions", "", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "", "watch"),
    }


def namespaced_permissions() -> set[Permission]:
    """The Role in each watched namespace of a namespaced install."""
    return set(OPERATOR_PERMISSIONS)


def lease_permissions(lease: str) -> set[Permission]:
    """The leader-election Role in the release's namespace: create a Lease (RBAC cannot name the
    object of a create), read and renew only its own."""
    return {("coordination.k8s.io", "leases", "", "create"),
            ("coordination.k8s.io", "leases", lease, "get"),
            ("coordination.k8s.io", "leases", lease, "update")}


def helm_binary() -> Path:
    return Binaries(cache_dir(), versions()).helm


def helm(*args: str, env: dict[str, str] | None = None, check: bool = True,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm; raise with its output when `check` and it fails."""
    result = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True,
                            env=env or dict(os.environ), timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def value_args(values_files: tuple[Path, ...] = (), values: dict[str, Any] | None = None) -> list[str]:
    """`-f` for each file, then `--set-json` for each top-level key of `values` (which win)."""
    args: list[str] = []
    for path in values_files:
        args += ["-f", str(path)]
    for key, value in (values or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def render_text(values_files: tuple[Path, ...] = (), values: dict[str, Any] | None = None,
                release: str = "kt", namespace: str = "kubetune-system", include_crds: bool = False) -> str:
    extra = ["--include-crds"] if include_crds else []
    return helm("template", release, str(CHART), "--namespace", namespace, *extra,
                *value_args(values_files, values)).stdout


def render(values_files: tuple[Path, ...] = (), values: dict[str, Any] | None = None,
           release: str = "kt", namespace: str = "kubetune-system") -> list[Manifest]:
    """The chart's manifests as `helm template` renders them."""
    text = render_text(values_files, values, release, namespace)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def container_env(deployment: Manifest) -> dict[str, str]:
    """The operator container's plain (non-valueFrom) environment variables."""
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e["value"] for e in env if "value" in e}


def rbac_rules(manifests: list[Manifest]) -> list[Manifest]:
    return [rule for m in manifests if m["kind"] in ("ClusterRole", "Role") for rule in m["rules"]]


def permissions(rules: list[Manifest]) -> set[Permission]:
    """(apiGroup, resource, resourceName or "", verb) for every combination the rules grant."""
    out = set()
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for name in rule.get("resourceNames") or [""]:
                    for verb in rule["verbs"]:
                        out.add((group, resource, name, verb))
    return out


# ---------------------------------------------------------------- values.yaml
def documented_names(values_text: str) -> dict[str, str]:
    """Every `# name -- description` comment of values.yaml, name to description."""
    docs: dict[str, str] = {}
    current: str | None = None
    for line in values_text.splitlines():
        stripped = line.strip()
        match = re.match(r"#\s*([A-Za-z0-9_.]+) -- (.*)", stripped)
        if match:
            current = match.group(1)
            docs[current] = match.group(2)
        elif current and stripped.startswith("#"):
            docs[current] += " " + stripped.lstrip("# ")
        else:
            current = None
    return docs


def lookup(values: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(values, dict) or key not in values:
            return KeyError
        values = values[key]
    return values
