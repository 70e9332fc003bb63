"""DANE for SMTP (RFC 7672): what TLSA records ask of a connection, and whether
a certificate chain meets them. Pure: no DNS, no sockets (`tlsa` looks the
records up, `transport` shakes hands and asks here).

What one MX host's DNS gives, and what the connection then does (the mode
`dane` of `tls_policy`):

    MX, host address or TLSA answer   TLS plan                  as RFC 7672 says
    not DNSSEC-validated (insecure)   opportunistic             2.2: DANE needs a secure chain
    secure, no TLSA records           opportunistic             2.2: pre-DANE opportunistic TLS
    secure TLSA, none usable          required (encrypt,        3.1.3 / Postfix: TLS is still
                                      unauthenticated)          mandatory, nothing to verify
    secure TLSA, some usable          dane: STARTTLS mandatory, 2.2, 3.1: the records decide;
                                      the chain must match one  no match -> defer, never clear
    TLSA lookup failed (SERVFAIL,     defer that host           2.1.1: a failed lookup is not
    bogus, timeout)                                             "no records" (a downgrade)

Usable records (RFC 7672 3.1.3, RFC 7671 9): only DANE-TA(2) and DANE-EE(3)
(PKIX-TA/EE need a CA set the sender cannot know); selector Cert(0) or
SPKI(1); matching Full(0), SHA2-256(1) or SHA2-512(2), a digest of the right
length; where both digests are published for a usage and selector only the
stronger (SHA2-512) counts (digest algorithm agility), so a weak legacy
record cannot be used to downgrade.

Name and date checks per usage (RFC 7672 3.1.1, 3.1.2, 3.2): DANE-EE checks
neither (the record pins the key itself); DANE-TA validates the path from the
leaf to the matching trust anchor (signatures, validity dates, CA flags, via
`cryptography`'s path validation) and the leaf's name against the reference
identifiers: the MX host name (the TLSA base domain) and the next-hop domain.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification

from mailpipe.contracts.config import TLSMode

from .tls_policy import TLSPlan


class Usage(enum.IntEnum):
    """The usages SMTP can use; PKIX-TA(0) and PKIX-EE(1) are unusable for it."""

    DANE_TA = 2
    DANE_EE = 3


class Selector(enum.IntEnum):
    CERT = 0  # the whole certificate (DER)
    SPKI = 1  # its SubjectPublicKeyInfo (DER)


class Matching(enum.IntEnum):
    FULL = 0
    SHA256 = 1
    SHA512 = 2


DIGEST_BYTES = MappingProxyType({Matching.SHA256: 32, Matching.SHA512: 64})
# RFC 7671 9: among digests the client supports, the strongest published wins.
DIGEST_STRENGTH = MappingProxyType({Matching.SHA256: 1, Matching.SHA512: 2})
# RFC 7672 3.2: the chain a DANE-TA record anchors is short in practice; the
# bound keeps a hostile server's 100-certificate chain from costing much.
MAX_CHAIN_DEPTH = 8


@dataclass(frozen=True)
class TLSARecord:
    usage: int
    selector: int
    matching: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.matching} {self.data.hex()[:16]}..."


@dataclass(frozen=True)
class TLSAAnswer:
    """One TLSA lookup's outcome; `secure`: the resolver marked it authentic (AD),
    records or their validated absence."""

    secure: bool
    records: tuple[TLSARecord, ...]


def usable(records: Iterable[TLSARecord]) -> tuple[TLSARecord, ...]:
    """The records that may authenticate an SMTP server (see the module doc)."""
    known = [
        r
        for r in records
        if r.usage in (Usage.DANE_TA, Usage.DANE_EE)
        and r.selector in (Selector.CERT, Selector.SPKI)
        and r.matching in (Matching.FULL, Matching.SHA256, Matching.SHA512)
        and (r.matching == Matching.FULL or len(r.data) == DIGEST_BYTES[Matching(r.matching)])
        and r.data
    ]
    strongest: dict[tuple[int, int], int] = {}
    for r in known:
        if r.matching != Matching.FULL:
            key = (r.usage, r.selector)
            strongest[key] = max(strongest.get(key, 0), DIGEST_STRENGTH[Matching(r.matching)])
    return tuple(
        r
        for r in known
        if r.matching == Matching.FULL
        or DIGEST_STRENGTH[Matching(r.matching)] == strongest[(r.usage, r.selector)]
    )


@dataclass(frozen=True)
class DanePolicy:
    """What one MX host's TLSA records ask of the connection: its TLS plan, the
    records the certificate must match (none: nothing to authenticate), and why,
    for logs and the deferral's text."""

    plan: TLSPlan
    records: tuple[TLSARecord, ...]
    why: str


OPPORTUNISTIC = TLSPlan(TLSMode.OPPORTUNISTIC, starttls=True, verify=False, clear_on_failure=True)
ENCRYPT = TLSPlan(TLSMode.REQUIRED, starttls=True, verify=False, clear_on_failure=False)
# `verify` is False: the CA check of the ssl module is off, the chain is checked
# here (`check_chain`) after the handshake and before anything is sent.
AUTHENTICATE = TLSPlan(TLSMode.DANE, starttls=True, verify=False, clear_on_failure=False)


def policy(host: str, route_secure: bool, answer: TLSAAnswer | None) -> DanePolicy:
    """The policy for MX `host` (see the table in the module doc). `route_secure`:
    its MX and address answers were both validated; `answer` is None when no TLSA
    lookup was made (an insecure route never asks)."""
    if not route_secure or answer is None:
        return DanePolicy(OPPORTUNISTIC, (), f"{host}: MX or address records not DNSSEC-signed")
    if not answer.secure:
        return DanePolicy(OPPORTUNISTIC, (), f"{host}: TLSA records not DNSSEC-signed")
    if not answer.records:
        return DanePolicy(OPPORTUNISTIC, (), f"{host}: no TLSA records")
    records = usable(answer.records)
    if not records:
        return DanePolicy(ENCRYPT, (), f"{host}: TLSA records published, none usable")
    return DanePolicy(AUTHENTICATE, records, f"{host}: {len(records)} usable TLSA records")


def _associated(record: TLSARecord, cert: x509.Certificate) -> bool:
    """Whether `cert` is the one `record` names (selector, then matching type)."""
    try:
        if record.selector == Selector.CERT:
            data = cert.public_bytes(serialization.Encoding.DER)
        else:
            # The key re-encoded by `cryptography`: the same DER as the
            # certificate's own SubjectPublicKeyInfo for every key type it reads.
            data = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
    except (ValueError, UnsupportedAlgorithm):  # a key type nobody can match
        return False
    if record.matching == Matching.SHA256:
        data = hashlib.sha256(data).digest()
    elif record.matching == Matching.SHA512:
        data = hashlib.sha512(data).digest()
    return data == record.data


def name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 6.4 as RFC 7672 3.2.3 applies it: case-insensitive, a wildcard
    only as the whole left-most label, standing for exactly one label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:] and "." in rest
    return pattern == name


def _names(cert: x509.Certificate) -> list[str]:
    """The DNS names a certificate is for: its subjectAltName DNS-IDs, or its
    common name when it has none (RFC 6125 6.4.4)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns_ids = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_ids = []
    if dns_ids:
        return dns_ids
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]


def _path_valid(
    leaf: x509.Certificate,
    anchor: x509.Certificate,
    intermediates: list[x509.Certificate],
    now: dt.datetime,
) -> str | None:
    """None if `leaf` chains to `anchor`, else why not. `cryptography`'s path
    validation (signatures, dates, CA flags, path lengths), without the Web
    PKI's extension profile, which DANE-TA does not ask for (RFC 7671 5.2)."""
    present = verification.Criticality.AGNOSTIC
    any_ee = verification.ExtensionPolicy.permit_all()
    ca_policy = verification.ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, present, None
    )
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([anchor]))
        .time(now)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=ca_policy, ee_policy=any_ee)
        .build_client_verifier()  # the path only: names are checked below, RFC 7672's way
    )
    try:
        verifier.verify(leaf, intermediates)
    except verification.VerificationError as exc:
        return str(exc)
    return None


def check_chain(
    records: Sequence[TLSARecord],
    chain_der: Sequence[bytes],
    reference_names: Sequence[str],
    now: dt.datetime,
) -> str | None:
    """None if the server's chain (leaf first, as sent) is authenticated by one of
    the usable `records`, else why not, in words for the deferral."""
    if not chain_der:
        return "the server sent no certificate"
    try:
        chain = [x509.load_der_x509_certificate(d) for d in chain_der[: MAX_CHAIN_DEPTH + 1]]
    except ValueError as exc:
        return f"unreadable certificate: {exc}"
    leaf = chain[0]
    # DANE-EE: the leaf itself, neither its names nor its dates (RFC 7672 3.1.1).
    if any(r.usage == Usage.DANE_EE and _associated(r, leaf) for r in records):
        return None
    why = "certificate matches no TLSA record"
    for record in (r for r in records if r.usage == Usage.DANE_TA):
        for index, anchor in enumerate(chain[1:], start=1):
            if not _associated(record, anchor):
                continue
            problem = _path_valid(leaf, anchor, chain[1:index], now)
            if problem is not None:
                why = f"chain to the DANE-TA anchor does not validate: {problem}"
                continue
            names = _names(leaf)
            if any(name_matches(p, n) for p in names for n in reference_names):
                return None
            why = (
                f"DANE-TA: certificate is for {', '.join(names) or 'no name'}, "
                f"not {' or '.join(reference_names)}"
            )
    return why
