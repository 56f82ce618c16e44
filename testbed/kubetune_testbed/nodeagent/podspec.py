"""What a kubelet derives from a Pod before it starts a container, as pure functions.

The container's environment (literal values, `$(VAR)` expansion, ConfigMap and
Secret keys, `envFrom`, the downward API), the files of its ConfigMap, Secret,
downward-API and projected volumes, and the /etc/hosts each pod sees. Inputs
are the pod manifest and lookups for the objects it refers to; nothing here
talks to the API server or touches the disk.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kubetune_api import Manifest

# (namespace, name) -> the object's data (Secrets already decoded), or None when it does not exist.
Lookup = Callable[[str, str], "Mapping[str, bytes] | None"]
# (audience or None, expirationSeconds) -> a token bound to the pod
TokenSource = Callable[["str | None", int], str]

CLUSTER_DOMAIN = "cluster.local"
DEFAULT_FILE_MODE = 0o644


class ConfigError(Exception):
    """Something the pod refers to is missing (yet): the kubelet's CreateContainerConfigError; retried."""


class Unsupported(Exception):
    """The pod asks for something the node agent does not do: the pod fails with this message."""


@dataclass(frozen=True)
class PodContext:
    """What the downward API and the environment need beyond the manifest."""

    pod: Manifest
    pod_ip: str
    host_ip: str
    node_name: str

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: `$$` escapes `$`, an unknown or unclosed reference stays as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(" and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2:end]
            out.append(env.get(name, f"$({name})"))
            i = end + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               '"': '\\"', "\\": "\\\\"}


def go_quote(text: str) -> str:
    """Go's strconv.Quote (fmt's %q): how a kubelet writes each value of metadata.labels or
    metadata.annotations. Python's isprintable() is Go's IsPrint (letters, marks, numbers,
    punctuation, symbols and the ASCII space)."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def field_value(ctx: PodContext, path: str) -> str:
    """The downward API's `fieldRef.fieldPath` for this pod."""
    meta, spec = ctx.pod["metadata"], ctx.pod["spec"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": ctx.node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": ctx.pod_ip,
        "status.podIPs": ctx.pod_ip,
        "status.hostIP": ctx.host_ip,
        "status.hostIPs": ctx.host_ip,
    }
    if path in simple:
        return str(simple[path])
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f"{k}={go_quote(v)}" for k, v in sorted(items.items()))
    if m := _SUBSCRIPT.match(path):
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise Unsupported(f"fieldRef.fieldPath {path!r} is not supported by the node agent")


def _key(lookup: Lookup, kind: str, namespace: str, ref: Manifest) -> str | None:
    data = lookup(namespace, ref["name"])
    optional = bool(ref.get("optional"))
    if data is None:
        if optional:
            return None
        raise ConfigError(f'{kind} "{ref["name"]}" not found')
    if ref["key"] not in data:
        if optional:
            return None
        raise ConfigError(f'couldn\'t find key {ref["key"]} in {kind} {namespace}/{ref["name"]}')
    return data[ref["key"]].decode(errors="replace")


def container_env(ctx: PodContext, container: Manifest, base: Mapping[str, str],
                  configmaps: Lookup, secrets: Lookup) -> dict[str, str]:
    """The environment a kubelet gives `container`: `base`, then envFrom, then env, in order."""
    env = dict(base)
    for source in container.get("envFrom") or ():
        prefix = source.get("prefix", "")
        ref, kind, lookup = ((source["configMapRef"], "configmap", configmaps) if "configMapRef" in source
                             else (source["secretRef"], "secret", secrets))
        data = lookup(ctx.namespace, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise ConfigError(f'{kind} "{ref["name"]}" not found')
        for key, raw in data.items():
            if "=" not in key:  # not a valid variable name: the kubelet skips it too
                env[prefix + key] = raw.decode(errors="replace")
    for var in container.get("env") or ():
        name, source = var["name"], var.get("valueFrom")
        if source is None:
            env[name] = expand(var.get("value", ""), env)
        elif "fieldRef" in source:
            env[name] = field_value(ctx, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source:
            if (value := _key(configmaps, "configmap", ctx.namespace, source["configMapKeyRef"])) is not None:
                env[name] = value
        elif "secretKeyRef" in source:
            if (value := _key(secrets, "secret", ctx.namespace, source["secretKeyRef"])) is not None:
                env[name] = value
        else:
            raise Unsupported(f"env {name}: valueFrom {sorted(source)} is not supported by the node agent")
    return env


def expand_argv(argv: list[str], env: Mapping[str, str]) -> list[str]:
    """The command line (command and args, or the image's entrypoint; images.py) with `$(VAR)` expanded."""
    return [expand(a, env) for a in argv]


def decode_secret(secret: Manifest) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def configmap_data(cm: Manifest) -> dict[str, bytes]:
    data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    return data


Files = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)


def _project(data: Mapping[str, bytes] | None, source: Manifest, kind: str, namespace: str,
             default_mode: int) -> Files:
    name = source.get("name", "")
    if data is None:
        if source.get("optional"):
            return {}
        raise ConfigError(f'{kind} "{name}" not found')
    items = source.get("items")
    if not items:
        return {key: (value, default_mode) for key, value in data.items()}
    files: Files = {}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise ConfigError(f'couldn\'t find key {item["key"]} in {kind} {namespace}/{name}')
        files[item["path"]] = (data[item["key"]], item.get("mode", default_mode))
    return files


def _downward_files(ctx: PodContext, items: list[Manifest], default_mode: int) -> Files:
    files: Files = {}
    for item in items:
        if "fieldRef" not in item:
            raise Unsupported(f"downwardAPI item {item['path']}: only fieldRef is supported by the node agent")
        files[item["path"]] = (field_value(ctx, item["fieldRef"]["fieldPath"]).encode(), item.get("mode", default_mode))
    return files


def volume_files(ctx: PodContext, volume: Manifest, configmaps: Lookup, secrets: Lookup,
                 token: TokenSource) -> Files | None:
    """The files of a ConfigMap, Secret, downwardAPI or projected volume; None for an emptyDir or hostPath."""
    ns = ctx.namespace
    if "emptyDir" in volume or "hostPath" in volume:
        return None
    if "configMap" in volume:
        src = volume["configMap"]
        return _project(configmaps(ns, src["name"]), src, "configmap", ns, src.get("defaultMode", DEFAULT_FILE_MODE))
    if "secret" in volume:
        src = {**volume["secret"], "name": volume["secret"]["secretName"]}
        return _project(secrets(ns, src["name"]), src, "secret", ns, src.get("defaultMode", DEFAULT_FILE_MODE))
    if "downwardAPI" in volume:
        src = volume["downwardAPI"]
        return _downward_files(ctx, src.get("items") or [], src.get("defaultMode", DEFAULT_FILE_MODE))
    if "projected" in volume:
        mode = volume["projected"].get("defaultMode", DEFAULT_FILE_MODE)
        files: Files = {}
        for source in volume["projected"].get("sources") or ():
            if "configMap" in source:
                files |= _project(configmaps(ns, source["configMap"]["name"]), source["configMap"], "configmap", ns, mode)
            elif "secret" in source:
                files |= _project(secrets(ns, source["secret"]["name"]), source["secret"], "secret", ns, mode)
            elif "downwardAPI" in source:
                files |= _downward_files(ctx, source["downwardAPI"].get("items") or [], mode)
            elif "serviceAccountToken" in source:
                sat = source["serviceAccountToken"]
                files[sat["path"]] = (token(sat.get("audience"), int(sat.get("expirationSeconds", 3600))).encode(), mode)
            else:
                raise Unsupported(f"volume {volume['name']}: projected source {sorted(source)} is not supported")
        return files
    kinds = sorted(k for k in volume if k != "name")
    raise Unsupported(f"volume {volume['name']}: {', '.join(kinds)} volumes are not supported by the node agent")


@dataclass(frozen=True)
class HostEntry:
    """A pod's address and the names DNS would give it."""

    ip: str
    hostname: str
    subdomain: str
    namespace: str

    def fqdns(self) -> list[str]:
        if not self.subdomain:
            return []
        base = f"{self.hostname}.{self.subdomain}.{self.namespace}"
        return [f"{base}.svc.{CLUSTER_DOMAIN}", f"{base}.svc", base, f"{self.hostname}.{self.subdomain}"]


def pod_host_entry(pod: Manifest, ip: str) -> HostEntry:
    spec = pod["spec"]
    return HostEntry(ip=ip, hostname=spec.get("hostname") or pod["metadata"]["name"],
                     subdomain=spec.get("subdomain", ""), namespace=pod["metadata"]["namespace"])


def hosts_file(own: HostEntry, peers: list[HostEntry]) -> str:
    """The pod's /etc/hosts: its own names, and those of the pods of its subdomain (the headless Service's DNS)."""
    lines = ["# Kubernetes-managed hosts file (kubetune node agent).",
             "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             "\t".join([own.ip, *own.fqdns(), own.hostname])]
    for peer in sorted(peers, key=lambda p: p.hostname):
        if peer.subdomain == own.subdomain and peer.namespace == own.namespace and peer.subdomain:
            lines.append("\t".join([peer.ip, *peer.fqdns()]))
    return "\n".join(lines) + "\n"
