"""Pod networking for the node agent: one bridge per local cluster, one network namespace per pod.

The local cluster owns a /24 out of 10.244.0.0/16 and a Linux bridge holding its
first address (the "host IP": the API server and MinIO listen there, so pods
reach them). Each pod gets a network namespace with a veth pair into the
bridge and the next free address; processes in different pods can bind the
same port. There is no default route and no forwarding: a pod reaches its own
loopback, the other pods of the bridge and the host IP, never another network.

Every name carries the cluster's index (bridge `ktbr<N>`, namespaces and host
veths `kt<N>-<pod uid prefix>`), so two local clusters on one machine never
touch each other's devices, and `destroy` removes exactly one cluster's.
Shells out to iproute2 (`ip`), which needs root.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")
SUBNET_POOL = ipaddress.ip_network("10.244.0.0/16")


class NetworkError(RuntimeError):
    """An `ip` command failed; the message has the command and its stderr."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class PodNetwork:
    """The pod network of one local cluster, identified by its index N (0..255)."""

    index: int

    @property
    def bridge(self) -> str:
        return f"ktbr{self.index}"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(f"10.244.{self.index}.0/24")  # type: ignore[return-value]

    @property
    def host_ip(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def prefix(self) -> str:
        """What every namespace and host-side veth of this cluster is named with."""
        return f"kt{self.index}-"

    def pod_addresses(self) -> list[str]:
        return [str(a) for a in self.subnet.hosts()][1:]  # .1 is the host

    def sandbox_name(self, pod_uid: str) -> str:
        # Link names are limited to 15 characters: "kt255-" plus 8 hex digits fits.
        return self.prefix + pod_uid.replace("-", "")[:8]


def _addresses_in_use() -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    out = json.loads(ip("-j", "-4", "addr", "show").stdout or "[]")
    return [ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}") for link in out for a in link.get("addr_info", [])]


def create_bridge() -> PodNetwork:
    """Claim the first /24 of 10.244.0.0/16 that no bridge and no address of this machine uses."""
    used = _addresses_in_use()
    for index in range(256):
        net = PodNetwork(index)
        if any(a.network.overlaps(net.subnet) for a in used):
            continue
        # `ip link add` fails when the name exists: that is what makes claiming atomic.
        if ip("link", "add", net.bridge, "type", "bridge", check=False).returncode != 0:
            continue
        ip("addr", "add", f"{net.host_ip}/{net.subnet.prefixlen}", "dev", net.bridge)
        ip("link", "set", net.bridge, "up")
        return net
    raise NetworkError("no free /24 left in 10.244.0.0/16 for a pod network")


def add_sandbox(net: PodNetwork, name: str, address: str) -> None:
    """A network namespace `name` with loopback and eth0=`address` on the bridge (idempotent)."""
    remove_sandbox(name)
    ip("netns", "add", name)
    ip("link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name)
    ip("link", "set", name, "master", net.bridge, "up")
    ip("-n", name, "addr", "add", f"{address}/{net.subnet.prefixlen}", "dev", "eth0")
    ip("-n", name, "link", "set", "eth0", "up")
    ip("-n", name, "link", "set", "lo", "up")


def netns_pids(name: str) -> list[int]:
    """Every process whose network namespace is `name` (what `ip netns pids` prints)."""
    try:
        inode = os.stat(NETNS_DIR / name).st_ino
    except FileNotFoundError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino == inode:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def kill_sandbox_processes(name: str, timeout: float = 5.0) -> None:
    """SIGKILL whatever still runs in the namespace and wait until it is gone."""
    deadline = time.monotonic() + timeout
    while (pids := netns_pids(name)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def remove_sandbox(name: str) -> None:
    """Kill the namespace's processes, then delete it; its veth pair goes with it."""
    if not (NETNS_DIR / name).exists():
        return
    kill_sandbox_processes(name)
    ip("netns", "delete", name, check=False)
    ip("link", "delete", name, check=False)  # normally gone with the namespace already


def sandboxes(net: PodNetwork) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(net.prefix))


def destroy(net: PodNetwork) -> None:
    """Remove every namespace, veth and the bridge of this cluster, and the processes inside."""
    for name in sandboxes(net):
        remove_sandbox(name)
    links = json.loads(ip("-j", "link", "show").stdout or "[]")
    for link in links:
        if link["ifname"].startswith(net.prefix):
            ip("link", "delete", link["ifname"], check=False)
    ip("link", "delete", net.bridge, check=False)
