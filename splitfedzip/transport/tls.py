"""A local certificate authority and certificates for a trial deployment (not for production)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 30


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    cn: str,
    ca_key: ec.EllipticCurvePrivateKey | None,
    ca_name: x509.Name | None,
    *,
    hosts: list[str] | None = None,
    usage: ExtendedKeyUsageOID | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    # EC P-256 keys: generated in milliseconds, supported by gRPC's TLS stack.
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    is_ca = ca_key is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn) if is_ca else ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(key if is_ca else ca_key, hashes.SHA256())
    return key, cert


def generate_certificates(
    out: str | Path, clients: int, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> dict[str, Path]:
    """Write ca.pem, server.pem/server.key (for ``hosts``) and client-N.pem/.key under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _issue("splitfedzip trial CA", None, None)
    written: dict[str, Path] = {}

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (out / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = out / f"{stem}.key"
        key_path.write_bytes(_key_pem(key))
        key_path.chmod(0o600)  # private keys readable by their owner only
        written[f"{stem}.pem"], written[f"{stem}.key"] = out / f"{stem}.pem", key_path

    write("ca", ca_key, ca_cert)
    (out / "ca.key").unlink()  # nothing else is signed later; do not leave the CA key around
    del written["ca.key"]
    key, cert = _issue(
        "splitfedzip-server", ca_key, ca_cert.subject,
        hosts=list(hosts), usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )  # fmt: skip
    write("server", key, cert)
    for i in range(clients):
        key, cert = _issue(
            f"client-{i}", ca_key, ca_cert.subject, usage=ExtendedKeyUsageOID.CLIENT_AUTH
        )
        write(f"client-{i}", key, cert)
    return written
