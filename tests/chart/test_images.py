"""The container images (operator/Dockerfile, trainer/Dockerfile) and the names that point at them.

No Docker engine here, so the images are not built; these checks keep the
Dockerfiles, the chart's defaults, the operator's default trainer image and
the README consistent, and show from uv.lock that the operator image's
dependency set holds no training stack.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
import yaml

from kubetune_operator.workers import DEFAULT_TRAINER_IMAGE, WORKER_UID
from kubetune_testbed import REPO

OPERATOR_DOCKERFILE = (REPO / "operator" / "Dockerfile").read_text()
TRAINER_DOCKERFILE = (REPO / "trainer" / "Dockerfile").read_text()
VALUES = yaml.safe_load((REPO / "charts" / "kubetune" / "values.yaml").read_text())
CHART = yaml.safe_load((REPO / "charts" / "kubetune" / "Chart.yaml").read_text())
TRAINING_STACK = {"torch", "deepspeed", "transformers", "peft", "boto3", "triton", "safetensors"}


def instructions(dockerfile: str, keyword: str) -> list[str]:
    """The arguments of every `keyword` instruction (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile)
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith(keyword + " ")]


def closure(extra: str) -> set[str]:
    """Every package uv.lock installs for the kubetune distribution with one extra."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    packages: dict[str, Any] = {p["name"]: p for p in lock["package"]}
    todo = [*packages["kubetune"]["dependencies"], *packages["kubetune"]["optional-dependencies"][extra]]
    seen: set[str] = set()
    while todo:
        dep = todo.pop()
        package = packages[dep["name"]]
        todo += [d for x in dep.get("extra", []) for d in package.get("optional-dependencies", {}).get(x, [])]
        if dep["name"] not in seen:
            seen.add(dep["name"])
            todo += package.get("dependencies", [])
    return seen


def test_the_operator_image_holds_only_the_operator_extra() -> None:
    syncs = [s for s in instructions(OPERATOR_DOCKERFILE, "RUN") if "uv sync" in s]
    assert syncs and all("--extra operator" in s and "--frozen" in s and "--no-dev" in s for s in syncs)
    assert "trainer" not in " ".join(syncs)
    assert instructions(OPERATOR_DOCKERFILE, "FROM")[-1] == "python:3.11-slim"
    deps = closure("operator")
    assert {"kopf", "kubernetes", "prometheus-client", "pydantic"} <= deps
    assert not deps & TRAINING_STACK, deps & TRAINING_STACK
    assert {"torch", "deepspeed", "transformers", "peft"} <= closure("trainer")


def test_the_operator_image_runs_the_operator_as_the_charts_non_root_user() -> None:
    assert instructions(OPERATOR_DOCKERFILE, "ENTRYPOINT") == ['["python", "-m", "kubetune_operator"]']
    (user,) = instructions(OPERATOR_DOCKERFILE, "USER")
    uid, gid = (int(x) for x in user.split(":"))
    assert uid != 0 and (uid, gid) == (VALUES["podSecurityContext"]["runAsUser"],
                                       VALUES["podSecurityContext"]["runAsGroup"])
    assert f"--uid {uid}" in OPERATOR_DOCKERFILE  # a passwd entry: getpass and kopf's identity need one
    (exposed,) = instructions(OPERATOR_DOCKERFILE, "EXPOSE")
    assert exposed.split() == [str(VALUES["metrics"]["port"]), str(VALUES["health"]["port"])]


def test_the_trainer_image_runs_the_trainer_as_the_worker_pods_user() -> None:
    syncs = [s for s in instructions(TRAINER_DOCKERFILE, "RUN") if "uv sync" in s]
    assert syncs and all("--extra trainer" in s and "--frozen" in s and "--no-dev" in s for s in syncs)
    base = instructions(TRAINER_DOCKERFILE, "FROM")[-1]
    assert base.startswith("nvidia/cuda:") and "-devel-" in base, "DeepSpeed compiles its ops with nvcc"
    assert instructions(TRAINER_DOCKERFILE, "USER") == [f"{WORKER_UID}:{WORKER_UID}"]
    assert f"--uid {WORKER_UID}" in TRAINER_DOCKERFILE
    # Worker pods run `torchrun` from PATH (workers.py).
    assert any("PATH=/opt/kubetune/bin:$PATH" in e for e in instructions(TRAINER_DOCKERFILE, "ENV"))


def test_both_images_use_the_uv_the_makefile_pins() -> None:
    pinned = re.search(r"^UV_VERSION\s*:=\s*(\S+)", (REPO / "Makefile").read_text(), flags=re.M)
    assert pinned
    for dockerfile in (OPERATOR_DOCKERFILE, TRAINER_DOCKERFILE):
        assert f"FROM ghcr.io/astral-sh/uv:{pinned.group(1)} AS uv" in dockerfile


def test_image_names_agree_everywhere() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert CHART["appVersion"] == version
    operator_image = f"{VALUES['image']['repository']}:{version}"
    trainer_image = f"{VALUES['trainer']['image']['repository']}:{version}"
    assert operator_image == "ghcr.io/kubetune/operator:0.1.0"
    assert trainer_image == DEFAULT_TRAINER_IMAGE
    assert f"-t {operator_image} ." in OPERATOR_DOCKERFILE
    assert f"-t {trainer_image} ." in TRAINER_DOCKERFILE
    readme = (REPO / "README.md").read_text()
    for line in (f"docker build -f operator/Dockerfile -t {operator_image} .",
                 f"docker build -f trainer/Dockerfile -t {trainer_image} ."):
        assert line in readme


@pytest.mark.parametrize("path", ["pyproject.toml", "uv.lock", "README.md", "api/kubetune_api/spec.py",
                                  "operator/kubetune_operator/handlers.py", "trainer/kubetune_trainer/__init__.py"])
def test_the_build_context_keeps_what_the_images_need(path: str) -> None:
    assert not ignored(path)


@pytest.mark.parametrize("path", [".venv/bin/python", ".local/env", "tests/conftest.py", "charts/kubetune/values.yaml",
                                  "operator/kubetune_operator/__pycache__/kube.cpython-311.pyc", ".git/HEAD"])
def test_the_build_context_leaves_out_the_rest(path: str) -> None:
    assert ignored(path)


def ignored(path: str) -> bool:
    """Docker's .dockerignore rule for the patterns the file uses: the last pattern that
    matches the path or one of its parent folders decides; `!` re-includes."""
    def regex(pattern: str) -> str:
        out = ""
        for token in re.split(r"(\*\*|\*|\?)", pattern):
            out += {"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        return out

    result = False
    parts = path.split("/")
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        if any(re.fullmatch(regex(pattern), "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            result = not negate
    return result
