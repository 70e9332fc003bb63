"""Issue 22, DANE (RFC 7672) on a real DNSSEC-signed zone: nsd serves
`dane.test`, signed with ldns-signzone, and the unsigned `plain.test`; unbound
validates with `dane.test`'s DS as its trust anchor (`devstack.dnssec`). The
relay's transport resolves MX, A and TLSA through that unbound and trusts its
AD bit; receivers are the recording aiosmtpd servers, one loopback address per
MX host, all on one port P (TLSA names are `_P._tcp.<host>`). Nothing here
mocks DNS or DNSSEC.

    domain              MX host (zone)           TLSA at the MX host            expected
    ee.dane.test        mx-ee (signed)           3 1 1 its key, cert for        delivered, TLS
                                                 another name (EE: no names)
    mismatch.dane.test  mx-mismatch (signed)     3 1 1 another key              deferred 4.7.5
    ta.dane.test        mx-ta (signed)           2 0 1 its CA, cert for mx-ta   delivered, TLS
    taname.dane.test    mx-taname (signed)       2 0 1 its CA, cert for another deferred 4.7.5
    none.dane.test      mx-none (signed)         none (validated absence)       opportunistic
    unusable.dane.test  mx-unusable (signed)     1 1 1 (PKIX-EE: unusable)      TLS, unverified,
                                                                                never clear
    bogus.dane.test     mx-bogus (signed)        3 1 1, signature broken        deferred 4.7.5
    implicit.dane.test  none: the domain itself  3 1 1 another key              deferred 4.7.5
    plain.test          mx.plain.test (unsigned) 3 1 1 another key: not trusted opportunistic
    insecure.plain.test mx-mismatch.dane.test    (signed host, unsigned MX)     opportunistic
    itlsa.dane.test     mx-itlsa (signed)        3 1 1 another key, in an       opportunistic
                                                 unsigned child zone (no DS)
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mailpipe.contracts.config import EgressIP
from mailpipe.devstack import samples
from mailpipe.devstack.dnssec import DNSSECBed
from mailpipe.devstack.procs import free_port
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.relay.delivery import SMTPTransport
from mailpipe.relay.ports import Envelope, SMTPReply

from ...relay.mx_certs import Certs, make_certs, server_context
from .conftest import Pool, RelayProcess, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.security]

# MX host -> its loopback address: each receiver has its own, on the common port
ADDRESSES = {
    "mx-ee": "127.0.0.31",
    "mx-mismatch": "127.0.0.32",
    "mx-ta": "127.0.0.33",
    "mx-taname": "127.0.0.34",
    "mx-none": "127.0.0.35",
    "mx-unusable": "127.0.0.36",
    "mx-bogus": "127.0.0.37",
    "plain": "127.0.0.38",
    "mx-itlsa": "127.0.0.39",
    "implicit": "127.0.0.40",  # a domain without MX: its own address (RFC 5321 5.1)
}
PORT_TRIES = 20  # a port free on one address is nearly always free on the others
ATTEMPT_SECONDS = 60.0  # a guard against a hang; an attempt takes milliseconds


def _spki_sha256(chain: Path) -> str:
    leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def _cert_sha256(pem: Path) -> str:
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _common_port() -> int:
    """A port free on every receiver address (binding each proves it)."""
    for _ in range(PORT_TRIES):
        port = free_port(ADDRESSES["mx-ee"])
        try:
            for address in ADDRESSES.values():
                with socket.socket() as s:
                    s.bind((address, port))
        except OSError:
            continue
        return port
    raise AssertionError(f"no port free on all of {sorted(ADDRESSES.values())}")


@dataclass(frozen=True)
class Bed:
    dns: DNSSECBed
    port: int
    certs: dict[str, Certs]  # MX host -> what its receiver serves


@pytest.fixture(scope="session")
def dane_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    work = tmp_path_factory.mktemp("dane")
    port = _common_port()
    certs: dict[str, Certs] = {}
    for host, name, ca in [
        ("mx-ee", "mx.somewhere-else.test", "ee-ca"),  # DANE-EE ignores the name
        ("mx-mismatch", "mx-mismatch.dane.test", "mismatch-ca"),
        ("mx-ta", "mx-ta.dane.test", "ta-ca"),
        ("mx-taname", "mx.somewhere-else.test", "taname-ca"),
        ("stranger", "mx.stranger.test", "stranger-ca"),  # none, unusable, plain
        ("nobody", "mx.nobody.test", "nobody-ca"),  # its key is in TLSA records, never served
    ]:
        (work / host).mkdir()
        certs[host] = make_certs(work / host, name, ca_name=ca)
    other_key = _spki_sha256(certs["nobody"].chain)  # a key no receiver serves
    bogus_data, broken = "ab" * 32, "cd" * 32
    tlsa = f"_{port}._tcp"
    signed = [
        *(f"{host} IN A {address}" for host, address in ADDRESSES.items() if host != "plain"),
        *(
            f"{d}.dane.test. IN MX 10 mx-{d}.dane.test."
            for d in ("ee", "mismatch", "ta", "taname", "none", "unusable", "bogus", "itlsa")
        ),
        # an insecure delegation (NS, no DS): TLSA records below it are unsigned
        "_tcp.mx-itlsa IN NS ns.dane.test.",
        f"{tlsa}.mx-ee IN TLSA 3 1 1 {_spki_sha256(certs['mx-ee'].chain)}",
        f"{tlsa}.mx-mismatch IN TLSA 3 1 1 {other_key}",
        f"{tlsa}.mx-ta IN TLSA 2 0 1 {_cert_sha256(certs['mx-ta'].ca)}",
        f"{tlsa}.mx-taname IN TLSA 2 0 1 {_cert_sha256(certs['mx-taname'].ca)}",
        f"{tlsa}.mx-unusable IN TLSA 1 1 1 {other_key}",
        f"{tlsa}.mx-bogus IN TLSA 3 1 1 {bogus_data}",
        f"{tlsa}.implicit IN TLSA 3 1 1 {other_key}",
    ]
    unsigned = [
        "@ IN MX 10 mx",
        f"mx IN A {ADDRESSES['plain']}",
        f"{tlsa}.mx IN TLSA 3 1 1 {other_key}",
        "insecure IN MX 10 mx-mismatch.dane.test.",
    ]
    bed = DNSSECBed(
        work,
        signed={"dane.test": signed},
        unsigned={
            "plain.test": unsigned,
            "_tcp.mx-itlsa.dane.test": [f"_{port} IN TLSA 3 1 1 {other_key}"],
        },
        tamper={bogus_data: broken},  # after signing: its RRSIG no longer verifies
    ).start()
    try:
        yield Bed(bed, port, certs)
    finally:
        bed.stop()


def _transport(bed: Bed) -> SMTPTransport:
    """The relay's transport in mode dane (no Kafka: the transport alone)."""
    config = samples.relay_config(
        "test/dane",
        samples.pool_topics("unused:9092", "mailpipe.test.dane", ()),
        [EgressIP(address="127.0.0.1", helo="relay.test")],
        tls={"mode": "dane"},
        dns_nameserver=bed.dns.resolver,
        smtp_port=bed.port,
    )
    return SMTPTransport(config)


async def _attempt(t: SMTPTransport, domain: str) -> SMTPReply:
    rcpt = f"a@{domain}"
    env = Envelope(domain, "s@sender.test", (rcpt,), b"Subject: t\r\n\r\nx\r\n", "127.0.0.1", "r")
    result = await asyncio.wait_for(t.deliver(env), ATTEMPT_SECONDS)
    return result.replies[rcpt]


Receiver = Callable[..., SMTPReceiver]


def _receiver(rx: Receiver, bed: Bed, host: str, certs: str | None) -> SMTPReceiver:
    """The receiver of MX `host`, serving `certs` over STARTTLS (None: no STARTTLS)."""
    tls = server_context(bed.certs[certs]) if certs else None
    return rx(ADDRESSES[host], bed.port, tls)


@pytest.mark.parametrize(
    ("domain", "host", "certs"),
    [
        ("ee.dane.test", "mx-ee", "mx-ee"),
        ("ta.dane.test", "mx-ta", "mx-ta"),
    ],
    ids=["DANE-EE key, any name", "DANE-TA CA, MX name"],
)
async def test_a_matching_tlsa_record_delivers_over_tls(
    dane_bed: Bed, smtp_receiver: Receiver, domain: str, host: str, certs: str
) -> None:
    rx = _receiver(smtp_receiver, dane_bed, host, certs)
    t = _transport(dane_bed)
    try:
        r = await _attempt(t, domain)
        assert r.code == 250, r
        assert [m.tls for m in rx.messages()] == [True]
    finally:
        await t.close()


@pytest.mark.parametrize(
    ("domain", "host", "certs", "why"),
    [
        ("mismatch.dane.test", "mx-mismatch", "mx-mismatch", "matches no TLSA record"),
        ("taname.dane.test", "mx-taname", "mx-taname", "not mx-taname.dane.test"),
        ("ta.dane.test", "mx-ta", "stranger", "matches no TLSA record"),
        ("implicit.dane.test", "implicit", "stranger", "matches no TLSA record"),
    ],
    ids=[
        "DANE-EE other key",
        "DANE-TA right CA, wrong name",
        "DANE-TA other CA",
        "no MX (validated), the domain's own TLSA",
    ],
)
async def test_a_mismatching_tlsa_record_defers_and_sends_nothing(
    dane_bed: Bed, smtp_receiver: Receiver, domain: str, host: str, certs: str, why: str
) -> None:
    rx = _receiver(smtp_receiver, dane_bed, host, certs)
    t = _transport(dane_bed)
    try:
        for _ in range(3):  # every retry: never clear, never unauthenticated
            r = await _attempt(t, domain)
            assert (r.code, r.enhanced) == (451, "4.7.5"), r
            assert "DANE" in r.text and why in r.text, r
        assert rx.messages() == []
    finally:
        await t.close()


async def test_a_host_with_usable_tlsa_records_but_no_starttls_is_deferred(
    dane_bed: Bed, smtp_receiver: Receiver
) -> None:
    """RFC 7672 2.2: usable TLSA records make TLS mandatory; a server that does
    not offer STARTTLS (or an attacker who strips it) gets nothing in clear."""
    rx = _receiver(smtp_receiver, dane_bed, "mx-ee", None)
    t = _transport(dane_bed)
    try:
        r = await _attempt(t, "ee.dane.test")
        assert (r.code, r.enhanced) == (451, "4.7.5"), r
        assert "STARTTLS required by policy" in r.text, r
        assert rx.messages() == []
    finally:
        await t.close()


async def test_a_bogus_tlsa_answer_defers_even_where_clear_text_would_be_accepted(
    dane_bed: Bed, smtp_receiver: Receiver
) -> None:
    """RFC 7672 2.1.1: a TLSA lookup that fails (here SERVFAIL: the signature
    was broken after signing) is not "no records", which would let an attacker
    who breaks the answer downgrade the session to clear text."""
    rx = _receiver(smtp_receiver, dane_bed, "mx-bogus", None)
    t = _transport(dane_bed)
    try:
        r = await _attempt(t, "bogus.dane.test")
        assert (r.code, r.enhanced) == (451, "4.7.5"), r
        assert "TLSA lookup" in r.text, r
        assert rx.messages() == []
    finally:
        await t.close()


@pytest.mark.parametrize(
    ("domain", "host"),
    [
        ("none.dane.test", "mx-none"),
        ("plain.test", "plain"),
        ("insecure.plain.test", "mx-mismatch"),
        ("itlsa.dane.test", "mx-itlsa"),
    ],
    ids=[
        "signed, no TLSA",
        "unsigned zone, TLSA ignored",
        "unsigned MX, signed host",
        "signed MX and host, unsigned TLSA",
    ],
)
@pytest.mark.parametrize("starttls", [True, False], ids=["STARTTLS", "no STARTTLS"])
async def test_without_dane_it_falls_back_to_opportunistic_tls(
    dane_bed: Bed, smtp_receiver: Receiver, domain: str, host: str, starttls: bool
) -> None:
    """RFC 7672 2.2: no secure TLSA records (none published, or not DNSSEC-
    validated: the MX answer, the address or the TLSA answer itself unsigned)
    is pre-DANE opportunistic TLS: encrypted without verification when offered
    (a certificate from an unknown CA for another name), clear text when not."""
    rx = _receiver(smtp_receiver, dane_bed, host, "stranger" if starttls else None)
    t = _transport(dane_bed)
    try:
        r = await _attempt(t, domain)
        assert r.code == 250, r
        assert [m.tls for m in rx.messages()] == [starttls]
    finally:
        await t.close()


@pytest.mark.parametrize("starttls", [True, False], ids=["STARTTLS", "no STARTTLS"])
async def test_unusable_tlsa_records_still_make_tls_mandatory(
    dane_bed: Bed, smtp_receiver: Receiver, starttls: bool
) -> None:
    """Secure TLSA records that are all unusable for SMTP (PKIX-EE here, RFC 7672
    3.1.3): nothing to authenticate against, but the server announced TLS, so it
    is encrypted (unverified) or deferred, never clear (Postfix: `encrypt`)."""
    rx = _receiver(smtp_receiver, dane_bed, "mx-unusable", "stranger" if starttls else None)
    t = _transport(dane_bed)
    try:
        r = await _attempt(t, "unusable.dane.test")
        if starttls:
            assert r.code == 250, r
            assert [m.tls for m in rx.messages()] == [True]
        else:
            assert (r.code, r.enhanced) == (451, "4.7.5"), r
            assert rx.messages() == []
    finally:
        await t.close()


def test_a_relay_in_mode_dane_delivers_where_tlsa_matches_and_defers_where_it_does_not(
    dane_bed: Bed,
    smtp_receiver: Receiver,
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
) -> None:
    """The whole relay process, from Kafka to the receivers: the pool's TLS mode
    and resolver come from its config file, as the operator writes them."""
    ee = _receiver(smtp_receiver, dane_bed, "mx-ee", "mx-ee")
    mismatch = _receiver(smtp_receiver, dane_bed, "mx-mismatch", "mx-mismatch")
    settings: dict[str, Any] = {
        "smtp_port": dane_bed.port,
        "dns_nameserver": dane_bed.dns.resolver,
        "tls": {"mode": "dane"},
        "delivery": {"allow_private_destinations": True},
    }
    pool = pool_factory(**settings)
    relay = relays(pool)
    pool.send("a@ee.dane.test")
    pool.send("b@mismatch.dane.test")
    pool.flush()

    def by_domain() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for e in pool.events():
            out.setdefault(e["recipient"].split("@")[1], []).append(e)
        return out

    wait_for(
        lambda: (
            len(by_domain().get("ee.dane.test", [])) >= 1
            and len(by_domain().get("mismatch.dane.test", [])) >= 2
        ),
        90,
        "a delivery to ee.dane.test and two deferrals of mismatch.dane.test",
        relay,
    )
    events = by_domain()
    assert [e["disposition"] for e in events["ee.dane.test"]] == ["delivered"]
    for e in events["mismatch.dane.test"]:
        assert (e["disposition"], e["enhanced_code"]) == ("deferred", "4.7.5"), e
    assert [m.tls for m in ee.messages()] == [True]
    assert mismatch.messages() == []
    relay.stop()
