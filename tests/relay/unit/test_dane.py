"""DANE's pure half (`relay.delivery.dane`, issue 22): which TLSA records are
usable, what each DNS outcome asks of the connection, and whether a chain
matches, usage by usage, with the name and date rules RFC 7672 gives each.
Certificates are real (made with `cryptography`); the DNS side is tested on a
real signed zone in tests/relay/integration/test_dane.py."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailpipe.contracts.config import RelayTLSSettings, TLSMode
from mailpipe.contracts.policy import TLSSettings
from mailpipe.relay.delivery.dane import (
    TLSAAnswer,
    TLSARecord,
    check_chain,
    name_matches,
    policy,
    usable,
)
from mailpipe.relay.delivery.tls_policy import TLSPlan, plan

from .conftest import make_config

pytestmark = pytest.mark.security

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
MX = "mx.example.test"
NAMES = (MX, "example.test")  # the MX host, then the next-hop domain
DER = serialization.Encoding.DER


def _cert(
    subject: str,
    key: Any,
    issuer: tuple[str, Any] | None = None,
    *,
    ca: bool = False,
    san: tuple[str, ...] = (),
    days: tuple[int, int] = (-1, 30),
) -> x509.Certificate:
    issuer_name, signer = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + dt.timedelta(days=days[0]))
        .not_valid_after(NOW + dt.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _key() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _record(usage: int, selector: int, matching: int, cert: x509.Certificate) -> TLSARecord:
    data = cert.public_bytes(DER) if selector == 0 else _spki(cert)
    if matching == 1:
        data = hashlib.sha256(data).digest()
    elif matching == 2:
        data = hashlib.sha512(data).digest()
    return TLSARecord(usage, selector, matching, data)


CA_KEY, LEAF_KEY, OTHER_KEY = _key(), _key(), _key()
CA = _cert("Test CA", CA_KEY, ca=True)
LEAF = _cert(MX, LEAF_KEY, ("Test CA", CA_KEY), san=(MX,))
CHAIN = [LEAF.public_bytes(DER), CA.public_bytes(DER)]
OTHER = _cert("other", OTHER_KEY)


def _with(leaf: x509.Certificate) -> list[bytes]:
    return [leaf.public_bytes(DER), CA.public_bytes(DER)]


# --- usable records -------------------------------------------------------------


def r(usage: int, selector: int, matching: int, length: int = 32) -> TLSARecord:
    return TLSARecord(usage, selector, matching, b"\x01" * length)


@pytest.mark.parametrize(
    ("published", "kept"),
    [
        ([r(3, 1, 1)], [r(3, 1, 1)]),
        ([r(2, 0, 1)], [r(2, 0, 1)]),
        ([r(0, 1, 1), r(1, 1, 1)], []),  # PKIX-TA/EE: unusable for SMTP
        ([r(4, 1, 1), r(3, 2, 1), r(3, 1, 3)], []),  # unknown usage, selector, matching
        ([r(3, 1, 1, 31), r(3, 1, 2, 32)], []),  # digests of the wrong length
        ([r(3, 1, 1), r(3, 1, 2, 64)], [r(3, 1, 2, 64)]),  # SHA-512 beats SHA-256 ...
        ([r(3, 1, 1), r(3, 0, 2, 64)], [r(3, 1, 1), r(3, 0, 2, 64)]),  # ... per selector
        ([r(3, 1, 1), r(2, 1, 2, 64)], [r(3, 1, 1), r(2, 1, 2, 64)]),  # ... and usage
        ([r(3, 1, 0, 91), r(3, 1, 2, 64)], [r(3, 1, 0, 91), r(3, 1, 2, 64)]),  # full stays
        ([TLSARecord(3, 1, 0, b"")], []),  # no data at all
    ],
    ids=[
        "DANE-EE",
        "DANE-TA",
        "PKIX",
        "unknown parameters",
        "bad digest length",
        "digest agility",
        "agility per selector",
        "agility per usage",
        "full match untouched",
        "empty",
    ],
)
def test_usable_records(published: list[TLSARecord], kept: list[TLSARecord]) -> None:
    assert list(usable(published)) == kept


# --- what each DNS outcome asks of the connection -----------------------------------


@pytest.mark.parametrize(
    ("route_secure", "answer", "mode", "clear_on_failure", "records"),
    [
        (False, None, TLSMode.OPPORTUNISTIC, True, 0),
        (True, TLSAAnswer(False, (r(3, 1, 1),)), TLSMode.OPPORTUNISTIC, True, 0),
        (True, TLSAAnswer(True, ()), TLSMode.OPPORTUNISTIC, True, 0),
        (True, TLSAAnswer(True, (r(1, 1, 1),)), TLSMode.REQUIRED, False, 0),
        (True, TLSAAnswer(True, (r(3, 1, 1), r(1, 1, 1))), TLSMode.DANE, False, 1),
    ],
    ids=[
        "insecure route",
        "insecure TLSA",
        "secure, no records",
        "secure, none usable",
        "secure, usable",
    ],
)
def test_policy_per_dns_outcome(
    route_secure: bool,
    answer: TLSAAnswer | None,
    mode: TLSMode,
    clear_on_failure: bool,
    records: int,
) -> None:
    decided = policy(MX, route_secure, answer)
    assert decided.plan.mode is mode
    assert decided.plan.starttls is True
    assert decided.plan.verify is False  # never the CA store: DANE or nothing
    assert decided.plan.clear_on_failure is clear_on_failure
    assert len(decided.records) == records
    assert MX in decided.why


# --- DANE-EE --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "matching"),
    [(1, 1), (1, 2), (1, 0), (0, 1), (0, 2), (0, 0)],
    ids=["SPKI SHA-256", "SPKI SHA-512", "SPKI full", "cert SHA-256", "cert SHA-512", "cert"],
)
def test_dane_ee_matches_the_leaf_by_each_selector_and_matching_type(
    selector: int, matching: int
) -> None:
    assert check_chain([_record(3, selector, matching, LEAF)], CHAIN, NAMES, NOW) is None
    other = _record(3, selector, matching, OTHER)
    assert "matches no TLSA record" in (check_chain([other], CHAIN, NAMES, NOW) or "")


def test_dane_ee_checks_neither_name_nor_dates() -> None:
    """RFC 7672 3.1.1: the record pins the key; names and expiry do not matter."""
    stale = _cert("someone.else.test", LEAF_KEY, days=(-400, -30))
    assert check_chain([_record(3, 1, 1, stale)], [stale.public_bytes(DER)], NAMES, NOW) is None


def test_dane_ee_does_not_match_a_ca_in_the_chain() -> None:
    """A DANE-EE record names the server's own certificate, never its issuer."""
    assert check_chain([_record(3, 1, 1, CA)], CHAIN, NAMES, NOW) is not None


# --- DANE-TA --------------------------------------------------------------------------


@pytest.mark.parametrize("record", [(2, 0, 1), (2, 1, 1), (2, 1, 2), (2, 0, 0)])
def test_dane_ta_validates_the_path_to_the_anchor_and_the_mx_name(
    record: tuple[int, int, int],
) -> None:
    assert check_chain([_record(*record, CA)], CHAIN, NAMES, NOW) is None


@pytest.mark.parametrize(
    ("san", "ok"),
    [
        ((MX,), True),
        (("example.test",), True),  # the next-hop domain is a reference identifier too
        (("*.example.test",), True),
        (("MX.Example.Test",), True),
        (("*.test",), False),  # a wildcard stands for one label, never a whole domain
        (("a.mx.example.test",), False),
        (("mx.elsewhere.test",), False),
    ],
)
def test_dane_ta_checks_the_leafs_name(san: tuple[str, ...], ok: bool) -> None:
    leaf = _cert("ignored.test", LEAF_KEY, ("Test CA", CA_KEY), san=san)
    problem = check_chain([_record(2, 0, 1, CA)], _with(leaf), NAMES, NOW)
    if ok:
        assert problem is None
    else:
        assert problem is not None and "DANE-TA: certificate is for" in problem


def test_dane_ta_uses_the_common_name_only_without_dns_names() -> None:
    leaf = _cert(MX, LEAF_KEY, ("Test CA", CA_KEY))
    assert check_chain([_record(2, 0, 1, CA)], _with(leaf), NAMES, NOW) is None


def test_dane_ta_refuses_an_expired_leaf() -> None:
    leaf = _cert(MX, LEAF_KEY, ("Test CA", CA_KEY), san=(MX,), days=(-60, -1))
    problem = check_chain([_record(2, 0, 1, CA)], _with(leaf), NAMES, NOW)
    assert problem is not None and "does not validate" in problem


def test_dane_ta_refuses_a_leaf_the_anchor_did_not_sign() -> None:
    """The server sends the anchor's certificate, but its leaf was signed by
    another key under the same issuer name: the signature does not verify."""
    forged = _cert(MX, LEAF_KEY, ("Test CA", OTHER_KEY), san=(MX,))
    problem = check_chain([_record(2, 0, 1, CA)], _with(forged), NAMES, NOW)
    assert problem is not None and "does not validate" in problem


def test_dane_ta_refuses_an_anchor_that_is_no_ca() -> None:
    not_ca = _cert("Test CA", CA_KEY)  # same key and name, but CA:false
    leaf = LEAF.public_bytes(DER)
    problem = check_chain([_record(2, 0, 1, not_ca)], [leaf, not_ca.public_bytes(DER)], NAMES, NOW)
    assert problem is not None


def test_dane_ta_through_an_intermediate() -> None:
    mid_key = _key()
    mid = _cert("Mid CA", mid_key, ("Test CA", CA_KEY), ca=True)
    leaf = _cert(MX, LEAF_KEY, ("Mid CA", mid_key), san=(MX,))
    chain = [leaf.public_bytes(DER), mid.public_bytes(DER), CA.public_bytes(DER)]
    assert check_chain([_record(2, 0, 1, CA)], chain, NAMES, NOW) is None
    assert check_chain([_record(2, 1, 1, mid)], chain, NAMES, NOW) is None


def test_dane_ta_never_anchors_on_the_leaf_itself() -> None:
    assert check_chain([_record(2, 0, 1, LEAF)], CHAIN, NAMES, NOW) is not None


def test_no_certificate_or_garbage_is_no_match() -> None:
    assert check_chain([_record(3, 1, 1, LEAF)], [], NAMES, NOW) == "the server sent no certificate"
    assert "unreadable" in (check_chain([_record(3, 1, 1, LEAF)], [b"junk"], NAMES, NOW) or "")


@pytest.mark.parametrize(
    ("pattern", "name", "ok"),
    [
        ("mx.example.test", "MX.EXAMPLE.TEST.", True),
        ("*.example.test", "mx.example.test", True),
        ("*.example.test", "example.test", False),
        ("*.example.test", "a.b.example.test", False),
        ("*.test", "example.test", False),
        ("m*.example.test", "mx.example.test", False),  # partial wildcards: never
    ],
)
def test_name_matches(pattern: str, name: str, ok: bool) -> None:
    assert name_matches(pattern, name) is ok


# --- configuration ----------------------------------------------------------------------


def test_mode_dane_plans_the_strictest_until_the_tlsa_records_say_otherwise() -> None:
    assert plan(RelayTLSSettings(mode=TLSMode.DANE)) == TLSPlan(TLSMode.DANE, True, False, False)


def test_mode_dane_needs_the_resolver_whose_ad_bit_it_trusts() -> None:
    with pytest.raises(ValueError, match=r"set dnsNameserver to a DNSSEC-validating resolver"):
        make_config(tls={"mode": "dane"})
    config = make_config(tls={"mode": "dane"}, dns_nameserver="127.0.0.1:53")
    assert config.tls.applied is TLSMode.DANE


def test_verify_with_mode_dane_is_refused() -> None:
    with pytest.raises(ValueError, match=r"contradicts mode dane.*drop verify"):
        TLSSettings.model_validate({"mode": "dane", "verify": True})
