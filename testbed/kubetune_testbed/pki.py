"""Certificates and keys for the local cluster.

The local API server runs with TLS, client-certificate authentication and
service-account tokens, exactly like a real one, so every test that passes here
passes against a real cluster's authentication. This module makes the CA, the
serving certificate, one client certificate per component and the
service-account signing key, all with the `cryptography` package.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class ClientIdentity:
    """Who a client certificate authenticates as: user name and groups."""

    file_stem: str
    user: str
    groups: tuple[str, ...] = ()


# Every component talks to the API server as its own well-known user, so the
# default RBAC bootstrap roles apply to it just as on a kubeadm cluster.
CLIENTS = (
    ClientIdentity("admin", "kubetune-admin", ("system:masters",)),
    ClientIdentity("controller-manager", "system:kube-controller-manager"),
    ClientIdentity("scheduler", "system:kube-scheduler"),
    # kwok impersonates many nodes at once; it needs more than system:node.
    ClientIdentity("kwok", "kubetune-kwok", ("system:masters",)),
    ClientIdentity("node-agent", "kubetune-node-agent", ("system:masters",)),
    # Kueue's manager: cluster-wide admission of every kind of job.
    ClientIdentity("kueue", "kubetune-kueue", ("system:masters",)),
)
NODE_AGENT_SERVING = "node-agent-serving"
# Kueue's webhook server: the API server calls it at https://127.0.0.1:<port>.
KUEUE_WEBHOOK_SERVING = "kueue-webhook"
APISERVER_KUBELET_CLIENT = "apiserver-kubelet-client"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def make_pki(pki: Path, service_ip: str = "10.96.0.1", host_ips: tuple[str, ...] = ()) -> None:
    """Write ca.{crt,key}, apiserver.{crt,key}, <client>.{crt,key} and sa.{key,pub} into `pki`.

    `host_ips` are further addresses the API server answers on (the pod network's
    host address). With them come the node agent's serving certificate for its
    kubelet endpoint and the client certificate the API server shows it.
    """
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubetune-local-ca")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki / "ca.key", ca_key)
    _write_cert(pki / "ca.crt", ca_cert)

    def issue(stem: str, subject: x509.Name, usage: x509.ObjectIdentifier,
              sans: list[x509.GeneralName] | None = None) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(subject, ca_name, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        _write_key(pki / f"{stem}.key", key)
        _write_cert(pki / f"{stem}.crt", builder.sign(ca_key, hashes.SHA256()))

    dns = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
           "kubernetes.default.svc.cluster.local"]
    issue(
        "apiserver",
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName(d) for d in dns]
        + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", service_ip, *host_ips)],
    )
    for client in CLIENTS:
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in client.groups]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, client.user))
        issue(client.file_stem, x509.Name(attrs), ExtendedKeyUsageOID.CLIENT_AUTH)
    issue(KUEUE_WEBHOOK_SERVING, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kueue-webhook")]),
          ExtendedKeyUsageOID.SERVER_AUTH, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    if host_ips:
        # The API server proxies `kubectl logs` to the node agent's kubelet endpoint over TLS, both ways.
        issue(NODE_AGENT_SERVING, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubetune-node-agent")]),
              ExtendedKeyUsageOID.SERVER_AUTH,
              [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", *host_ips)])
        # No group: it only ever authenticates to the node agent, never to the API server.
        issue(APISERVER_KUBELET_CLIENT,
              x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver-kubelet-client")]),
              ExtendedKeyUsageOID.CLIENT_AUTH)

    # Service-account tokens are signed with an RSA key (RS256 is what the
    # API server's token issuer expects by default).
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def kubeconfig(server: str, pki: Path, stem: str) -> str:
    """A kubeconfig (YAML text) that authenticates with the client certificate `stem`."""
    return f"""apiVersion: v1
kind: Config
clusters:
- name: kubetune-local
  cluster:
    server: {server}
    certificate-authority: {pki / "ca.crt"}
users:
- name: {stem}
  user:
    client-certificate: {pki / f"{stem}.crt"}
    client-key: {pki / f"{stem}.key"}
contexts:
- name: kubetune-local
  context: {{cluster: kubetune-local, user: {stem}}}
current-context: kubetune-local
"""
