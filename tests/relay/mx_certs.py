"""Certificates for MX host names, for the TLS tests of the relay (unit and integration).

A throwaway CA and a serving certificate for one DNS name and no IP address,
so a client that checks the certificate against the address it connected to
fails and one that checks the MX host name succeeds (issue 10 finding 10).
EC keys: quick to make. `server_context` serves it; `SSL_CERT_FILE=<ca>` makes
`ssl.create_default_context()` trust it.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALIDITY = dt.timedelta(days=1)  # longer than any test run


@dataclass(frozen=True)
class Certs:
    ca: Path
    chain: Path  # leaf (for the one name) then CA
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, issuer: str, key: Any, signer: Any, *, ca: bool, san: list[str]
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def make_certs(
    directory: Path, name: str, ca_name: str = "test-ca", also: tuple[str, ...] = ()
) -> Certs:
    """A CA and a certificate for `name` (and the names `also`) only, written to
    `directory`. Two CAs trusted at once need two `ca_name`s: OpenSSL finds an
    issuer by its name."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(ca_name, ca_name, ca_key, ca_key, ca=True, san=[])
    leaf = _cert(name, ca_name, leaf_key, ca_key, ca=False, san=[name, *also])
    pem = serialization.Encoding.PEM
    out = Certs(directory / "ca.pem", directory / "chain.pem", directory / "key.pem")
    out.ca.write_bytes(ca.public_bytes(pem))
    out.chain.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    out.key.write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return out


def server_context(certs: Certs) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.chain, certs.key)
    return context
