"""Throwaway certificates for TLS tests: a CA, a server and clients, written to a folder.

    certs = make_certs(tmp_path)
    server_credentials = grpc.ssl_server_credentials(
        [(certs.server.key, certs.server.cert)],
        root_certificates=certs.ca.cert,
        require_client_auth=True,
    )
    tls = TLS(ca=certs.ca.cert_path, cert=certs.client.cert_path, key=certs.client.key_path)

Keys are EC P-256 (instant to make); certificates are valid from a day ago for 30 days.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Certs", "Issued", "make_certs"]


@dataclass(frozen=True)
class Issued:
    """One certificate and its private key: PEM bytes, PEM files, ``cryptography`` objects."""

    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    cert_path: Path
    key_path: Path
    certificate: x509.Certificate = field(repr=False)
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)


@dataclass(frozen=True)
class Certs:
    """Everything a TLS test needs; ``untrusted_*`` chain to a CA no server or client trusts."""

    folder: Path
    ca: Issued
    server: Issued
    """For the server: SANs ``localhost`` (DNS) and ``127.0.0.1`` (IP)."""
    server_localhost_only: Issued
    """For the server: SAN ``localhost`` only, so ``127.0.0.1`` needs a name override."""
    client: Issued
    """For mutual TLS, signed by ``ca``."""
    untrusted_ca: Issued
    untrusted_client: Issued
    """For mutual TLS, signed by ``untrusted_ca``."""


def make_certs(folder: Path) -> Certs:
    """Make the CAs and certificates of :class:`Certs` and write their PEM files to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _issue(folder, "ca", "headserve test CA", issuer=None)
    untrusted_ca = _issue(folder, "untrusted-ca", "untrusted test CA", issuer=None)
    localhost = x509.DNSName("localhost")
    return Certs(
        folder=folder,
        ca=ca,
        server=_issue(
            folder,
            "server",
            "localhost",
            issuer=ca,
            sans=[localhost, x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        ),
        server_localhost_only=_issue(
            folder, "server-localhost", "localhost", issuer=ca, sans=[localhost]
        ),
        client=_issue(folder, "client", "test client", issuer=ca),
        untrusted_ca=untrusted_ca,
        untrusted_client=_issue(folder, "untrusted-client", "test client", issuer=untrusted_ca),
    )


def _issue(
    folder: Path,
    stem: str,
    common_name: str,
    *,
    issuer: Issued | None,
    sans: list[x509.GeneralName] | None = None,
) -> Issued:
    """A CA (``issuer=None``: self-signed), a server (``sans`` given) or a client certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    is_ca = issuer is None
    signer_key = key if issuer is None else issuer.private_key
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    if is_ca:
        builder = builder.add_extension(
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
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if sans else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    certificate = builder.sign(signer_key, hashes.SHA256())

    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return Issued(cert_pem, key_pem, cert_path, key_path, certificate, key)
