"""The entrypoints of the project's own images, read from the Dockerfiles they are built from.

The node agent pulls no images: a container runs in the project's environment.
A container that names its `command` runs that; one that leaves it to the
image (the chart's operator Deployment, say) needs the image's ENTRYPOINT and
CMD, which a container runtime reads from the image's config. For the images
this project builds they are in its Dockerfiles, so the agent reads them there:

    image repository (any tag or digest)   Dockerfile
    ghcr.io/kubetune/operator             operator/Dockerfile
    ghcr.io/kubetune/trainer              trainer/Dockerfile

(PROJECT_IMAGES below), and applies Kubernetes' rules: `command` replaces the
ENTRYPOINT (and drops CMD), `args` replaces CMD. An image the map does not
name, or one whose ENTRYPOINT comes from its base image (the trainer image's
comes from nvidia/cuda), is unknown: a container that needs its entrypoint
does not start, and its pod says why (ErrImagePull / ImagePullBackOff, as a
kubelet says of an image it cannot get), instead of running something else.
Only ENTRYPOINT and CMD are taken from the image: its ENV, WORKDIR and USER are
not (the environment is the project's; see the README's limits).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kubetune_api import Manifest

from ..repository import REPO

PROJECT_IMAGES: dict[str, str] = {
    "ghcr.io/kubetune/operator": "operator/Dockerfile",
    "ghcr.io/kubetune/trainer": "trainer/Dockerfile",
}


class ImageUnknown(Exception):
    """The container needs its image's entrypoint, and the node agent does not know it."""


@dataclass(frozen=True)
class ImageConfig:
    """What the container runtime takes from an image for the command: ENTRYPOINT and CMD (None: not set
    in the Dockerfile's final stage, i.e. inherited from its base image, which the node agent cannot see)."""

    dockerfile: str
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None


def repository(image: str) -> str:
    """`registry/name` of an image reference, without its tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        if line:
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _argv(form: str) -> tuple[str, ...]:
    """The exec form (a JSON array) as it is; the shell form through /bin/sh -c, as Docker runs it."""
    if form.startswith("["):
        return tuple(str(a) for a in json.loads(form))
    return ("/bin/sh", "-c", form)


def parse_dockerfile(text: str, name: str = "Dockerfile") -> ImageConfig:
    """ENTRYPOINT and CMD of the final stage. Setting ENTRYPOINT resets an inherited CMD (Docker's rule)."""
    steps = _instructions(text)
    last_from = max((i for i, (word, _) in enumerate(steps) if word == "FROM"), default=-1)
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    for word, rest in steps[last_from + 1:]:
        if word == "ENTRYPOINT":
            entrypoint, cmd = _argv(rest), ()
        elif word == "CMD":
            cmd = _argv(rest)
    return ImageConfig(dockerfile=name, entrypoint=entrypoint, cmd=cmd)


@cache
def project_image(repo: str) -> ImageConfig | None:
    path = PROJECT_IMAGES.get(repo)
    return None if path is None else parse_dockerfile((REPO / path).read_text(), path)


def _known() -> str:
    return ", ".join(f"{repo} -> {path}" for repo, path in PROJECT_IMAGES.items())


def command_line(container: Manifest) -> list[str]:
    """The container's argv before $(VAR) expansion, by Kubernetes' rules for command, args and the image."""
    command = [str(a) for a in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if command:
        return command + args
    image = str(container.get("image") or "")
    config = project_image(repository(image))
    where = f"{Path(__file__).name} maps {_known()}"
    if config is None:
        raise ImageUnknown(f'node agent: container {container["name"]} has no command and image "{image}" is not '
                           f"one of the project's ({where}); the node agent runs no other images: give the "
                           "container a command")
    if config.entrypoint is None:
        raise ImageUnknown(f'node agent: container {container["name"]} has no command, and image "{image}" '
                           f"({config.dockerfile}) takes its ENTRYPOINT from its base image, which the node agent "
                           "cannot see: give the container a command")
    argv = [*config.entrypoint, *(args if args else (config.cmd or ()))]
    if not argv:
        raise ImageUnknown(f'node agent: image "{image}" ({config.dockerfile}) has neither ENTRYPOINT nor CMD, '
                           f"and container {container['name']} has no command")
    return argv

