"""What the node agent does as a kubelet for pods that are meant to run for good: Deployments.

A container that cannot start is restarted with the kubelet's back-off and its pod stays (no
Failed pods for the ReplicaSet to replace); the project's images run the ENTRYPOINT of their
Dockerfiles; probes decide readiness and restart an unhealthy container; a volume never hides
the project's environment. Each test checks what `kubectl get pods`, `kubectl describe` and
`kubectl logs` would show a user.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from harness import wait_for
from test_nodeagent_pods import Pods, python_pod

from kubetune_testbed import REPO

pytestmark = pytest.mark.cluster


def deployment(name: str, container: dict[str, Any], **pod_spec: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "main", **container}], **pod_spec}}}}


def pods_of(cluster: Any, namespace: str, app: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", f"app={app}", "-o", "json")
    return list(json.loads(out.stdout)["items"])


def status(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["status"]["containerStatuses"][0])


def events(cluster: Any, namespace: str, pod: str) -> list[tuple[str, str]]:
    out = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                          f"involvedObject.kind=Pod,involvedObject.name={pod}", "-o", "json")
    return [(e["reason"], e["message"]) for e in json.loads(out.stdout)["items"]]


def test_a_deployment_that_cannot_start_keeps_one_pod_in_back_off(cluster, namespace: str, pods: Pods) -> None:
    pods.apply(deployment("bad-command", {"image": "example.com/app:1", "command": ["/no/such/program"]}),
               deployment("unknown-image", {"image": "example.com/app:1"}))

    # The kubelet's back-off: 10 s after the first failure, 20 s after the second (restart 1).
    seen: dict[int, str] = {}

    def second_back_off() -> dict[str, Any] | None:
        found = pods_of(cluster, namespace, "bad-command")
        if len(found) != 1 or not found[0]["status"].get("containerStatuses"):
            return None
        crash = status(found[0])
        waiting = crash["state"].get("waiting") or {}
        if waiting.get("reason") == "CrashLoopBackOff":
            seen.setdefault(crash["restartCount"], waiting["message"])
        return found[0] if 1 in seen else None

    pod = wait_for(second_back_off, timeout=60, what="bad-command's second back-off", interval=0.2)
    name = pod["metadata"]["name"]
    assert seen == {0: f"back-off 10s restarting failed container=main pod={name}",
                    1: f"back-off 20s restarting failed container=main pod={name}"}
    crash = status(pod)
    assert pod["status"]["phase"] == "Running"  # as on a kubelet: its container has been started
    assert crash["lastState"]["terminated"]["reason"] == "StartError"
    assert "no such file or directory" in crash["lastState"]["terminated"]["message"].lower()
    backoffs = [m for r, m in events(cluster, namespace, name) if r == "BackOff"]
    assert backoffs and backoffs[0] == f"Back-off restarting failed container main in pod {name}"

    # An image the node agent cannot run: its pod waits, as for an image that cannot be pulled.
    (waiting,) = pods_of(cluster, namespace, "unknown-image")
    assert waiting["status"]["phase"] == "Pending"
    state = status(waiting)["state"]["waiting"]
    assert state["reason"] == "ImagePullBackOff" and "give the container a command" in state["message"]

    # One pod each, all along: nothing Failed for the ReplicaSet to replace.
    everything = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    assert len(everything) == 2 and not [p for p in everything if p["status"].get("phase") == "Failed"]
    rs_events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                "involvedObject.kind=ReplicaSet,reason=SuccessfulCreate", "-o", "name").stdout
    assert len(rs_events.split()) == 2


def test_the_project_images_run_the_entrypoint_of_their_dockerfiles(pods: Pods) -> None:
    operator = {"name": "main", "image": "ghcr.io/kubetune/operator:0.1.0", "args": ["--help"]}
    trainer = {"name": "main", "image": "ghcr.io/kubetune/trainer:0.1.0", "args": ["--help"]}
    pods.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator-help"},
                "spec": {"restartPolicy": "Never", "containers": [operator]}},
               {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "trainer-help"},
                "spec": {"restartPolicy": "Never", "containers": [trainer]}})
    done = pods.wait_phase("operator-help", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Succeeded", pods.logs("operator-help")
    assert pods.logs("operator-help").startswith("usage: python -m kubetune_operator [-h] [--standalone]")
    # The trainer image's ENTRYPOINT is its base image's (nvidia/cuda), which the node agent cannot know.
    state = wait_for(lambda: (s := pods.get("trainer-help")["status"].get("containerStatuses")) and
                     s[0]["state"].get("waiting", {}).get("reason") in ("ErrImagePull", "ImagePullBackOff") and s[0],
                     what="trainer-help waiting for its image")
    assert "takes its ENTRYPOINT from its base image" in state["state"]["waiting"]["message"]
    assert pods.get("trainer-help")["status"]["phase"] == "Pending"


def test_probes_make_a_container_ready_and_restart_it_when_it_stops_answering(cluster, namespace: str,
                                                                                 pods: Pods) -> None:
    # Ready 1 s after it starts; its liveness endpoint fails from 4 s on.
    code = ("import http.server, time; start = time.time()\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        up = time.time() - start\n"
            "        ok = up > 1 if self.path == '/ready' else up < 4\n"
            "        self.send_response(200 if ok else 500); self.end_headers()\n"
            "    def log_message(self, *a): pass\n"
            "print('serving', flush=True); http.server.HTTPServer(('', 8080), H).serve_forever()")
    pods.apply(python_pod("probed", code, restartPolicy="Always", terminationGracePeriodSeconds=1, container={
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
        "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}, "initialDelaySeconds": 1, "periodSeconds": 1,
                          "failureThreshold": 2}}))

    def ready(pod: dict[str, Any]) -> str:
        return next(c["status"] for c in pod["status"].get("conditions", []) if c["type"] == "Ready")

    first = wait_for(lambda: (p := pods.get("probed"))["status"].get("containerStatuses") and
                     status(p)["state"].get("running") and p, what="probed running")
    assert ready(first) == "False" and status(first)["ready"] is False  # not before its readiness probe passes
    wait_for(lambda: ready(pods.get("probed")) == "True", timeout=20, what="probed Ready")
    # Killed, and waiting for its restart (restartCount goes up when it starts again, after the back-off).
    killed = wait_for(lambda: (s := status(pods.get("probed")))["state"].get("waiting") and s, timeout=30,
                      what="probed killed after its liveness probe failed")
    assert killed["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert killed["lastState"]["terminated"]["exitCode"] == 143  # SIGTERM: it stopped within the grace period
    assert ready(pods.get("probed")) == "False"
    reasons = events(cluster, namespace, "probed")
    assert ("Killing", "Container main failed its probe, will be restarted") in reasons
    unhealthy = [m for r, m in reasons if r == "Unhealthy"]
    assert any(re.match(r"Liveness probe failed: HTTP probe failed with statuscode: 500", m) for m in unhealthy)
    assert any(m.startswith("Readiness probe failed:") for m in unhealthy)


def test_a_volume_never_hides_the_project_environment(pods: Pods) -> None:
    """The chart's operator mounts an emptyDir on /tmp: a checkout under /tmp must still run, as an
    image's own files (its /opt/kubetune) never are under a pod's volume."""
    pods.apply(python_pod("covered", "import kubetune_api, os; print(sorted(os.listdir(os.path.dirname(os.getcwd()))))",
                          container={"volumeMounts": [{"name": "cover", "mountPath": str(REPO.parent)}],
                                     "workingDir": str(REPO)},
                          volumes=[{"name": "cover", "emptyDir": {}}]))
    done = pods.wait_phase("covered", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Succeeded", pods.logs("covered")
    # The checkout is there, and nothing else of what the volume covers.
    assert pods.logs("covered") == f"[{REPO.name!r}]\n"
