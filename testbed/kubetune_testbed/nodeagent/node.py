"""Who and where the node agent's node is: what a pod's runner needs to know about its node.

Its name and pod network (for the downward API, the pod's status and its
sandbox), the folder the pods' files live in, and where the API server is as
the pods see it, from which every container's environment starts (as a
kubelet sets KUBERNETES_SERVICE_HOST and PORT from the `kubernetes` Service).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from kubetune_api import Manifest

from ..repository import REPO
from .network import PodNetwork

# What a container finds on its PATH: the project's environment first, then the system's.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What stands in for an image's files: the virtual environment, its interpreter, the project's
# source (installed editable). A pod's volume never hides them (podinit binds them back).
ENVIRONMENT_PATHS = sorted({sys.prefix, sys.base_prefix, str(REPO)})


@dataclass(frozen=True)
class NodeIdentity:
    name: str
    net: PodNetwork
    pods_dir: Path  # one folder per pod uid below it
    api_host: str
    api_port: int

    def base_env(self, pod: Manifest) -> dict[str, str]:
        """What every container's environment starts with, before the pod's own variables."""
        env = {
            "PATH": f"{Path(sys.executable).parent}:{SYSTEM_PATH}",
            "HOSTNAME": str(pod["spec"].get("hostname") or pod["metadata"]["name"]),
            "HOME": os.environ.get("HOME", "/root"),
            "KUBERNETES_SERVICE_HOST": self.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port),
            "KUBERNETES_PORT": f"tcp://{self.api_host}:{self.api_port}",
        }
        for name in ("LANG", "LC_ALL", "TZ"):
            if name in os.environ:
                env[name] = os.environ[name]
        return env
