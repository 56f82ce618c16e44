"""What the node agent derives from a pod manifest, as a kubelet would: no cluster, plain manifests in."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kubetune_testbed.nodeagent.podspec import (
    ConfigError,
    HostEntry,
    PodContext,
    Unsupported,
    configmap_data,
    container_env,
    expand,
    expand_argv,
    hosts_file,
    volume_files,
)

CONFIGMAPS = {("ns", "cfg"): {"greeting": b"hello", "file.txt": b"content", "bad=key": b"x"}}
SECRETS = {("ns", "creds"): {"password": b"s3cret"}}


def configmaps(ns: str, name: str) -> dict[str, bytes] | None:
    return CONFIGMAPS.get((ns, name))


def secrets(ns: str, name: str) -> dict[str, bytes] | None:
    return SECRETS.get((ns, name))


def pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "w-0", "namespace": "ns", "uid": "u-1", "labels": {"app": "x", "rank": "0"}},
            "spec": {"serviceAccountName": "runner", "containers": [{"name": "main"}], **spec}}


def ctx(p: dict[str, Any] | None = None) -> PodContext:
    return PodContext(p or pod(), pod_ip="10.244.0.2", host_ip="10.244.0.1", node_name="local-node-0")


@pytest.mark.parametrize(("text", "expanded"), [
    ("plain", "plain"),
    ("$(A)", "a"),
    ("x-$(A)-$(B)", "x-a-b"),
    ("$(MISSING)", "$(MISSING)"),
    ("$$(A)", "$(A)"),
    ("$$", "$"),
    ("$(A", "$(A"),
    ("cost: $5", "cost: $5"),
    ("trailing $", "trailing $"),
])
def test_expand_follows_kubernetes_rules(text: str, expanded: str) -> None:
    assert expand(text, {"A": "a", "B": "b"}) == expanded


def test_env_from_literals_references_downward_api_and_env_from_in_kubelet_order() -> None:
    container = {
        "name": "main",
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "creds"}}],
        "env": [
            {"name": "LIT", "value": "v"},
            {"name": "REF", "value": "$(LIT)-$(POD)"},  # POD is defined later: stays as written
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['rank']"}}},
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
            {"name": "password", "value": "overrides envFrom"},
        ],
    }
    env = container_env(ctx(), container, {"PATH": "/bin"}, configmaps, secrets)
    assert env == {
        "PATH": "/bin", "CFG_greeting": "hello", "CFG_file.txt": "content", "password": "overrides envFrom",
        "LIT": "v", "REF": "v-$(POD)", "POD": "w-0", "NS": "ns", "IP": "10.244.0.2", "NODE": "local-node-0",
        "RANK": "0", "GREETING": "hello", "PASSWORD": "s3cret",
    }


@pytest.mark.parametrize("ref", [
    {"configMapKeyRef": {"name": "absent", "key": "k"}},
    {"configMapKeyRef": {"name": "cfg", "key": "absent"}},
    {"secretKeyRef": {"name": "creds", "key": "absent"}},
])
def test_a_missing_reference_is_a_config_error_that_is_retried(ref: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        container_env(ctx(), {"name": "c", "env": [{"name": "X", "valueFrom": ref}]}, {}, configmaps, secrets)


def test_the_command_line_is_expanded() -> None:
    assert expand_argv(["torchrun", "--node-rank=$(RANK)", "$$(KEPT)"], {"RANK": "1"}) == [
        "torchrun", "--node-rank=1", "$(KEPT)"]


def token(audience: str | None, seconds: int) -> str:
    return f"token-{audience}-{seconds}"


def test_configmap_secret_and_projected_volumes_become_files_with_modes() -> None:
    c = ctx()
    cm = volume_files(c, {"name": "v", "configMap": {"name": "cfg", "items": [{"key": "greeting", "path": "a/g"}]}},
                      configmaps, secrets, token)
    assert cm == {"a/g": (b"hello", 0o644)}
    secret = volume_files(c, {"name": "v", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                          configmaps, secrets, token)
    assert secret == {"password": (b"s3cret", 0o400)}
    # What the ServiceAccount admission plugin injects into every pod.
    projected = {"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "cfg", "items": [{"key": "file.txt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]}}
    assert volume_files(c, projected, configmaps, secrets, token) == {
        "token": (b"token-None-3607", 0o644), "ca.crt": (b"content", 0o644), "namespace": (b"ns", 0o644)}
    assert volume_files(c, {"name": "v", "emptyDir": {}}, configmaps, secrets, token) is None
    assert volume_files(c, {"name": "v", "configMap": {"name": "absent", "optional": True}},
                        configmaps, secrets, token) == {}
    with pytest.raises(ConfigError):
        volume_files(c, {"name": "v", "configMap": {"name": "absent"}}, configmaps, secrets, token)
    with pytest.raises(Unsupported, match="persistentVolumeClaim"):
        volume_files(c, {"name": "v", "persistentVolumeClaim": {"claimName": "c"}}, configmaps, secrets, token)


def test_downward_api_annotations_are_written_as_a_kubelet_writes_them() -> None:
    """One annotation: its value as it is (the operator's config.json travels so); missing: empty. All of
    them: key="value" lines, sorted, each value quoted as Go's %q quotes it."""
    p = pod()
    p["metadata"]["annotations"] = {"kubetune.io/config": '{"a":"b"}',
                                    "note": 'say "hi"\\\n\t\u00e9\x01\u00a0\U0001f600'}
    volume = {"name": "v", "downwardAPI": {"items": [
        {"path": path, "fieldRef": {"fieldPath": field}} for path, field in [
            ("config.json", "metadata.annotations['kubetune.io/config']"),
            ("absent", "metadata.annotations['example.com/absent']"),
            ("all", "metadata.annotations"),
        ]]}}
    files = volume_files(ctx(p), volume, configmaps, secrets, token)
    assert files == {
        "config.json": (b'{"a":"b"}', 0o644),
        "absent": (b"", 0o644),
        "all": (('kubetune.io/config="{\\"a\\":\\"b\\"}"\n'
                 'note="say \\"hi\\"\\\\\\n\\t\u00e9\\x01\\u00a0\U0001f600"').encode(), 0o644),
    }


def test_configmap_binary_data_is_decoded() -> None:
    cm = {"data": {"a": "text"}, "binaryData": {"b": base64.b64encode(b"\x00\x01").decode()}}
    assert configmap_data(cm) == {"a": b"text", "b": b"\x00\x01"}


def test_hosts_file_names_the_pods_of_the_same_subdomain_only() -> None:
    me = HostEntry("10.244.0.2", "job-worker-0", "job", "ns")
    peer = HostEntry("10.244.0.3", "job-worker-1", "job", "ns")
    stranger = HostEntry("10.244.0.4", "other-0", "other", "ns")
    elsewhere = HostEntry("10.244.0.5", "job-worker-1", "job", "ns2")
    text = hosts_file(me, [peer, stranger, elsewhere])
    lines = text.splitlines()
    assert "127.0.0.1\tlocalhost" in lines
    assert ("10.244.0.2\tjob-worker-0.job.ns.svc.cluster.local\tjob-worker-0.job.ns.svc\tjob-worker-0.job.ns"
            "\tjob-worker-0.job\tjob-worker-0") in lines
    assert "10.244.0.3\tjob-worker-1.job.ns.svc.cluster.local\tjob-worker-1.job.ns.svc\tjob-worker-1.job.ns" \
           "\tjob-worker-1.job" in lines
    assert "10.244.0.4" not in text and "10.244.0.5" not in text
    alone = hosts_file(HostEntry("10.244.0.6", "p", "", "ns"), [peer])
    assert alone.splitlines()[-1] == "10.244.0.6\tp"
