"""Throw-away PKI for a local control plane: a CA, serving and client certificates, SA signing key.

Short-lived and generated per run, so nothing secret is ever stored in the repository.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = timedelta(days=2)


@dataclass(frozen=True)
class KeyPair:
    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class ControlPlanePki:
    ca: KeyPair
    serving: KeyPair
    admin: KeyPair
    service_account_key: Path
    service_account_pub: Path


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _new_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


class CertificateAuthority:
    """Signs leaf certificates for servers and clients of one local environment."""

    def __init__(
        self,
        common_name: str = "barge-local-ca",
        *,
        existing: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
    ) -> None:
        """A new self-signed CA, or the ``existing`` key and certificate (``load``)."""
        self.key, self.cert = existing or _new_ca(common_name)

    @classmethod
    def load(cls, pair: KeyPair) -> CertificateAuthority:
        """The CA written at ``pair``, to issue more certificates under it (a node's, a kubelet's)."""
        key = serialization.load_pem_private_key(pair.key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{pair.key_path}: not an EC private key")
        return cls(existing=(key, x509.load_pem_x509_certificate(pair.cert_path.read_bytes())))

    def write(self, directory: Path, stem: str = "ca") -> KeyPair:
        pair = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
        _write_cert(pair.cert_path, self.cert)
        _write_key(pair.key_path, self.key)
        return pair

    def issue(
        self,
        directory: Path,
        stem: str,
        common_name: str,
        *,
        organization: str | None = None,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        server: bool = False,
    ) -> KeyPair:
        """Issue a leaf certificate (client, or server when ``server``) and write it as PEM files."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organization))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        pair = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
        _write_cert(pair.cert_path, builder.sign(self.key, hashes.SHA256()))
        _write_key(pair.key_path, key)
        return pair


def make_control_plane_pki(directory: Path, serving_ips: tuple[str, ...] = ()) -> ControlPlanePki:
    """Everything a local kube-apiserver needs: CA, serving cert, an admin client cert, SA keys.

    ``serving_ips``: addresses the apiserver serves on besides loopback and the ``kubernetes``
    Service's (a real node's pods reach it at the node's address)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority()
    serving = ca.issue(
        directory,
        "apiserver",
        "kube-apiserver",
        dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
        ip_addresses=("127.0.0.1", "10.0.0.1", *serving_ips),
        server=True,
    )
    admin = ca.issue(directory, "admin", "barge-admin", organization="system:masters")
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key_path = directory / "sa.key"
    sa_pub_path = directory / "sa.pub"
    _write_key(sa_key_path, sa_key)
    sa_pub_path.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return ControlPlanePki(ca.write(directory), serving, admin, sa_key_path, sa_pub_path)


@dataclass(frozen=True)
class ServingPki:
    ca: KeyPair
    serving: KeyPair


def make_serving_pki(
    directory: Path,
    common_name: str = "barge-coordinator",
    *,
    dns_names: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = ("127.0.0.1",),
) -> ServingPki:
    """A CA and one server certificate for it (e.g. the coordinator's gRPC endpoint on loopback)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority(f"{common_name}-ca")
    serving = ca.issue(
        directory, "serving", common_name, dns_names=dns_names, ip_addresses=ip_addresses, server=True
    )
    return ServingPki(ca.write(directory), serving)
