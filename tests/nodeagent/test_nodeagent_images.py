"""What the node agent runs when a container leaves its command to the image, and how it probes
containers: Dockerfiles and manifests in, no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_testbed import REPO
from kubetune_testbed.nodeagent.images import (
    PROJECT_IMAGES,
    ImageUnknown,
    command_line,
    parse_dockerfile,
    repository,
)
from kubetune_testbed.nodeagent.podspec import Unsupported
from kubetune_testbed.nodeagent.probes import ContainerProbes, Probe, Prober, parse_probes

OPERATOR = "ghcr.io/kubetune/operator:0.1.0"
TRAINER = "ghcr.io/kubetune/trainer@sha256:" + "ab" * 32


@pytest.mark.parametrize(("image", "repo"), [
    ("ghcr.io/kubetune/operator:0.1.0", "ghcr.io/kubetune/operator"),
    ("ghcr.io/kubetune/operator", "ghcr.io/kubetune/operator"),
    ("registry:5000/kubetune/operator@sha256:00", "registry:5000/kubetune/operator"),
    ("registry:5000/kubetune/operator:1.2", "registry:5000/kubetune/operator"),
])
def test_an_images_repository_drops_tag_and_digest(image: str, repo: str) -> None:
    assert repository(image) == repo


def test_the_project_dockerfiles_give_the_entrypoints() -> None:
    for repo, path in PROJECT_IMAGES.items():
        assert (REPO / path).is_file(), f"{repo} maps to {path}, which does not exist"
    operator = parse_dockerfile((REPO / "operator/Dockerfile").read_text())
    assert (operator.entrypoint, operator.cmd) == (("python", "-m", "kubetune_operator"), ())
    trainer = parse_dockerfile((REPO / "trainer/Dockerfile").read_text())
    assert (trainer.entrypoint, trainer.cmd) == (None, ("torchrun", "--help"))  # ENTRYPOINT: its base image's


def test_only_the_final_stage_counts_and_entrypoint_resets_an_earlier_cmd() -> None:
    text = ('FROM build AS b\nENTRYPOINT ["make"]\n\nFROM python:3.11 \\\n  AS final\n# a comment\n'
            'CMD ["ignored"]\nENTRYPOINT server --port \\\n  8080\n')
    config = parse_dockerfile(text)
    assert config.entrypoint == ("/bin/sh", "-c", "server --port 8080") and config.cmd == ()


@pytest.mark.parametrize(("container", "argv"), [
    # Kubernetes' rules: command replaces ENTRYPOINT and drops CMD; args replace CMD.
    ({"image": OPERATOR}, ["python", "-m", "kubetune_operator"]),
    ({"image": OPERATOR, "args": ["--standalone"]}, ["python", "-m", "kubetune_operator", "--standalone"]),
    ({"image": OPERATOR, "command": ["python", "-V"]}, ["python", "-V"]),
    ({"image": TRAINER, "command": ["torchrun"], "args": ["-m", "x"]}, ["torchrun", "-m", "x"]),
    ({"image": "example.com/any:1", "command": ["sleep"], "args": ["1"]}, ["sleep", "1"]),
])
def test_command_args_and_the_image_entrypoint(container: dict[str, Any], argv: list[str]) -> None:
    assert command_line({"name": "c", **container}) == argv


@pytest.mark.parametrize(("container", "says"), [
    ({"image": "example.com/any:1"}, "is not one of the project's"),
    ({"image": TRAINER, "args": ["--help"]}, "takes its ENTRYPOINT from its base image"),
])
def test_an_entrypoint_the_node_agent_cannot_know_is_an_error_not_a_guess(container: dict[str, Any], says: str) -> None:
    with pytest.raises(ImageUnknown, match=says):
        command_line({"name": "c", **container})


def test_probes_parse_with_kubernetes_defaults_and_named_ports() -> None:
    container = {"name": "op", "ports": [{"name": "health", "containerPort": 8081}],
                 "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 20},
                 "readinessProbe": {"tcpSocket": {"port": 8080}, "failureThreshold": 1}}
    liveness, readiness = parse_probes(container)
    assert (liveness.kind, liveness.action, liveness.port, liveness.path) == ("livenessProbe", "http", 8081, "/healthz")
    assert (liveness.period, liveness.timeout, liveness.failure_threshold, liveness.success_threshold) == (20, 1, 3, 1)
    assert (readiness.action, readiness.port, readiness.failure_threshold) == ("tcp", 8080, 1)


@pytest.mark.parametrize(("probe", "says"), [
    ({"exec": {"command": ["true"]}}, "livenessProbe with exec is not run by the node agent"),
    ({"httpGet": {"port": "nope"}}, "names port 'nope'"),
])
def test_probes_the_node_agent_does_not_run_say_so(probe: dict[str, Any], says: str) -> None:
    with pytest.raises(Unsupported, match=says):
        parse_probes({"name": "c", "livenessProbe": probe})


def results(kind: str, outcomes: list[bool], **thresholds: int) -> list[bool | None]:
    """A prober's state after each outcome (True: the probe passed); no thread, no network."""
    prober = Prober(Probe(kind, "tcp", 1, **thresholds), "10.0.0.1", lambda: True, lambda *_: None, lambda: None)
    states = []
    for passed in outcomes:
        prober.record(None if passed else "refused")
        states.append(prober.state)
    return states


def test_probe_results_flip_only_after_their_thresholds() -> None:
    # Readiness starts not ready; liveness starts passing; a startup probe starts undecided.
    assert results("readinessProbe", [False, True, False, False, False], failure_threshold=3) == [
        False, True, True, True, False]
    assert results("readinessProbe", [True, True], success_threshold=2) == [False, True]
    assert results("livenessProbe", [False, False, True, False, False, False]) == [
        True, True, True, True, True, False]
    assert results("startupProbe", [False, True]) == [None, True]
    assert results("startupProbe", [False, False, False]) == [None, None, False]


def test_a_container_is_ready_only_after_its_startup_probe_and_killed_after_a_failed_liveness_probe() -> None:
    probes = ContainerProbes([Probe("startupProbe", "tcp", 1), Probe("readinessProbe", "tcp", 1),
                              Probe("livenessProbe", "tcp", 1, failure_threshold=1)], "10.0.0.1",
                             lambda *_: None, lambda: None)
    startup, readiness, liveness = (probes.by_kind[k] for k in ("startupProbe", "readinessProbe", "livenessProbe"))
    readiness.record(None)
    assert not probes.started and not probes.ready  # readiness passed, but startup has not
    startup.record(None)
    assert probes.started and probes.ready and probes.kill_reason is None
    liveness.record("HTTP probe failed with statuscode: 500")
    assert probes.kill_reason == "Container failed liveness probe, will be restarted"
