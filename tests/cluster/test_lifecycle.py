"""`make up` / `make down` as a user runs them: idempotent, self-healing, and leaving nothing behind.

Uses its own run directory, so the session's cluster is untouched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from kubetune_testbed import REPO, LocalCluster

pytestmark = pytest.mark.cluster


def make(target: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBETUNE_FAKE_NODES": "1"}
    result = subprocess.run(["make", "-s", target, f"RUN_DIR={run_dir}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"make {target} failed:\n{result.stdout}\n{result.stderr}"
    return result


def started_pids(run_dir: Path) -> dict[str, int]:
    state = json.loads((run_dir / "state.json").read_text())
    return {p["name"]: p["pid"] for p in state["processes"]}


def processes_mentioning(path: Path) -> list[str]:
    """Every live process whose command line mentions `path` (what `make down` must leave none of)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split(") ")[-1]
        except OSError:
            continue
        if str(path) in cmdline and not state.startswith("Z"):
            found.append(f"{proc.name}: {cmdline}")
    return found


def pod_network(run_dir: Path) -> tuple[str, str]:
    """The node agent's bridge and the prefix of its pods' network namespaces and veths."""
    index = json.loads((run_dir / "state.json").read_text())["pod_network"]
    return f"ktbr{index}", f"kt{index}-"


def network_devices(bridge: str, prefix: str) -> list[str]:
    """The bridge, veths and network namespaces of one local cluster that exist now."""
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout)
    found = [link["ifname"] for link in links if link["ifname"] == bridge or link["ifname"].startswith(prefix)]
    netns = Path("/run/netns")
    return found + [f"netns {p.name}" for p in (netns.iterdir() if netns.is_dir() else []) if p.name.startswith(prefix)]


def test_up_is_idempotent_heals_a_stale_run_and_down_leaves_no_process(tmp_path: Path) -> None:
    run = tmp_path / "run"
    try:
        make("up", run)
        first = started_pids(run)
        assert set(first) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
                              "node-agent", "minio", "kueue"}
        env_text = (run / "env").read_text()
        for var in ("KUBECONFIG", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "PATH"):
            assert f"export {var}=" in env_text

        # A second `up` is harmless: same processes, nothing restarted.
        assert "already up" in make("up", run).stdout
        assert started_pids(run) == first

        # A session killed halfway leaves a half-dead run directory: `up` cleans it and starts afresh.
        os.kill(first["kube-apiserver"], signal.SIGKILL)
        make("up", run)
        second = started_pids(run)
        assert not set(second.values()) & set(first.values())
        leftovers = [f for f in processes_mentioning(run) if any(f.startswith(f"{pid}:") for pid in first.values())]
        assert leftovers == [], "processes of the stale run survived"

        # A pod of the node agent runs, with its own network namespace, when the cluster goes down.
        cluster = LocalCluster(run)
        pod = cluster.kubectl("run", "sleeper", "--image=ignored", "--restart=Never", "--command", "--",
                              "python", "-c", "import time; time.sleep(600)", str(run))  # named: processes_mentioning
        assert pod.returncode == 0, pod.stderr
        wait = cluster.kubectl("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s")
        assert wait.returncode == 0, wait.stderr
        bridge, prefix = pod_network(run)
        assert bridge in network_devices(bridge, prefix)
        assert any(d.startswith("netns ") for d in network_devices(bridge, prefix))
        assert [p for p in processes_mentioning(run) if "time.sleep(600)" in p], "the pod runs as a local process"

        make("down", run)
        assert processes_mentioning(run) == []
        assert network_devices(bridge, prefix) == []
        assert not (run / "state.json").exists()
    finally:
        if (run / "state.json").exists():  # a failed assertion must not leave a cluster running
            make("down", run)
