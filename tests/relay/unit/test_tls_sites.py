"""Issue 22 Deliver 1, "overridable per site": a pool's `tls.sites` give one
recipient domain or domain group its own TLS mode.

- which plan a destination gets: the domain's site, else its group's, else
  the pool's (the lookup of the throttle overrides);
- the relay config refuses a site that contradicts itself, names no group, or
  asks for dane without the pool's validating resolver;
- against a real TLS receiver whose certificate names another host, a site in
  mode `verify` defers (nothing in clear) while another domain of the same
  pool, `opportunistic`, delivers encrypted through the same MX; a connection
  opened for the one is never reused for the other;
- a `dane` site in an opportunistic pool looks up TLSA records for its MX
  only (and an `mta-sts` site consults its policy only:
  test_mta_sts_transport.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.flags
import pytest
from pydantic import ValidationError

from mailpipe.contracts.config import RelayConfig, TLSMode
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.relay.delivery import MXResolver, Route, SMTPTransport
from mailpipe.relay.delivery.dane import TLSAAnswer, TLSARecord
from mailpipe.relay.delivery.mx import stub_resolver
from mailpipe.relay.delivery.tls_policy import destination_plan
from mailpipe.relay.ports import Envelope, SMTPReply

from ..mx_certs import make_certs, server_context
from .conftest import make_config

pytestmark = pytest.mark.security

HOST = "127.0.0.1"
MX_NAME = "mx.shared.test"
GROUPS = {"big": ["big.test", "*.big.test"]}
SITES = {
    "big": {"mode": "verify"},
    "one.big.test": {"mode": "required"},  # a domain of the group: its own entry wins
    "plain.test": {"mode": "none"},
}


@pytest.mark.parametrize(
    ("domain", "mode"),
    [
        ("elsewhere.test", TLSMode.OPPORTUNISTIC),  # no site: the pool's mode
        ("plain.test", TLSMode.NONE),  # its domain's site
        ("two.big.test", TLSMode.VERIFY),  # its group's site
        ("big.test", TLSMode.VERIFY),
        ("one.big.test", TLSMode.REQUIRED),  # domain before group
        ("One.BIG.test", TLSMode.REQUIRED),  # recipient domains are case-insensitive
    ],
    ids=["pool", "domain", "group", "group-apex", "domain-over-group", "case"],
)
def test_a_destination_gets_its_sites_plan_else_the_pools(domain: str, mode: TLSMode) -> None:
    config = make_config(domain_groups=GROUPS, tls={"mode": "opportunistic", "sites": SITES})
    assert destination_plan(config, domain).mode is mode


def test_required_with_verify_for_a_site_is_verify() -> None:
    config = make_config(tls={"sites": {"x.test": {"mode": "required", "verify": True}}})
    assert destination_plan(config, "x.test").verify is True


@pytest.mark.parametrize(
    ("tls", "extra", "message"),
    [
        (
            {"sites": {"x.test": {"mode": "opportunistic", "verify": True}}},
            {},
            r"tls\.sites\.x\.test\.verify: true contradicts mode opportunistic.*use mode: verify",
        ),
        (
            {"sites": {"x.test": {"mode": "mta-sts", "verify": True}}},
            {},
            r"tls\.sites\.x\.test\.verify: true contradicts mode mta-sts",
        ),
        (
            {"sites": {"gmial": {"mode": "verify"}}},
            {"domain_groups": GROUPS},
            r"tls\.sites\.gmial names no domain group defined in domainGroups",
        ),
        (
            {"sites": {"X.Test": {"mode": "verify"}}},
            {},
            r"tls\.sites\.X\.Test: write the domain in lower case \(x\.test\)",
        ),
        (
            {"sites": {"x.test": {"mode": "dane"}}},
            {},
            r"tls\.sites\.x\.test\.mode dane trusts the AD bit.*set dnsNameserver",
        ),
        (
            {"mode": "opportunistic", "ca_file": "/ca.pem", "sites": {"x.test": {"mode": "none"}}},
            {},
            r"only used to verify certificates.*use mode: verify",
        ),
    ],
    ids=["verify-opportunistic", "verify-mta-sts", "unknown-group", "capitals", "dane", "bundle"],
)
def test_the_relay_config_refuses_a_bad_site_naming_it(
    tls: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        make_config(tls=tls, **extra)


def test_a_ca_bundle_is_accepted_when_only_a_site_verifies() -> None:
    config = make_config(
        tls={"mode": "opportunistic", "ca_file": "/ca.pem", "sites": {"x.test": {"mode": "verify"}}}
    )
    assert config.tls.ca_file == "/ca.pem"


def test_a_dane_site_asks_the_resolver_for_dnssec() -> None:
    """The AD bit a dane site trusts is set only in answers to queries with DO."""
    config = make_config(dns_nameserver="127.0.0.1:53", tls={"sites": {"x.test": {"mode": "dane"}}})
    assert stub_resolver(config).ednsflags & dns.flags.DO


class SharedMX(MXResolver):
    """Every destination's MX is the one receiver, known by one host name."""

    def __init__(self, config: RelayConfig, port: int, secure: bool = False) -> None:
        super().__init__(config)
        self.route = Route(HOST, port, MX_NAME, secure)

    async def routes(self, domain: str) -> list[Route]:
        return [self.route]


async def attempt(t: SMTPTransport, domain: str) -> SMTPReply:
    rcpt = f"a@{domain}"
    env = Envelope(domain, "s@sender.test", (rcpt,), b"Subject: t\r\n\r\nx\r\n", HOST, "r")
    result = await asyncio.wait_for(t.deliver(env), 60)  # a guard against hangs
    return result.replies[rcpt]


async def test_a_verify_site_defers_on_a_wrong_name_while_the_pool_delivers(
    smtp_receiver: Callable[..., SMTPReceiver], tmp_path: Path
) -> None:
    wrong = make_certs(tmp_path, "mx.wrong.test", ca_name="wrong-ca")
    rx = smtp_receiver(HOST, tls=server_context(wrong))
    config = make_config(
        egress=[{"address": HOST, "helo": "relay.test"}],
        delivery={"allow_private_destinations": True},  # a loopback receiver: opted in
        # the CA is trusted, so only the name is wrong
        tls={
            "mode": "opportunistic",
            "ca_file": str(wrong.ca),
            "sites": {"secure.test": {"mode": "verify"}},
        },
    )
    t = SMTPTransport(config, SharedMX(config, rx.port))
    try:
        r = await attempt(t, "casual.test")  # the pool's mode: encrypted, unverified
        assert r.code == 250, r
        for _ in range(3):  # the opportunistic connection, now idle, is not reused either
            r = await attempt(t, "secure.test")
            assert (r.code, r.enhanced) == (451, "4.7.5"), r
            assert MX_NAME in r.text and "certificate" in r.text.lower()
        r = await attempt(t, "casual.test")
        assert r.code == 250, r
        assert [(m.tls, m.rcpt_tos) for m in rx.messages()] == [
            (True, ("a@casual.test",)),
            (True, ("a@casual.test",)),
        ]
    finally:
        await t.close()


class PublishedTLSA:
    """The validated TLSA answer of the MX (in place of the transport's resolver;
    the real lookup is tests/relay/integration/test_dane.py's), and who asked."""

    def __init__(self, answer: TLSAAnswer) -> None:
        self.answer = answer
        self.asked: list[str] = []

    async def lookup(self, host: str, port: int) -> TLSAAnswer:
        self.asked.append(host)
        return self.answer


async def test_a_dane_site_checks_tlsa_records_where_the_pool_does_not(
    smtp_receiver: Callable[..., SMTPReceiver], tmp_path: Path
) -> None:
    """A DANE-EE record matching no key of the receiver: the dane site defers
    (RFC 7672: usable records make TLS and a match mandatory), the pool's other
    domains on the same, signed MX go opportunistic and never ask for TLSA."""
    rx = smtp_receiver(HOST, tls=server_context(make_certs(tmp_path, MX_NAME)))
    config = make_config(
        egress=[{"address": HOST, "helo": "relay.test"}],
        delivery={"allow_private_destinations": True},
        dns_nameserver="127.0.0.1:53",  # unused: the TLSA answer is given below
        tls={"mode": "opportunistic", "sites": {"dane.test": {"mode": "dane"}}},
    )
    t = SMTPTransport(config, SharedMX(config, rx.port, secure=True))
    assert t._tlsa is not None  # made because a site needs it, though the pool does not
    tlsa = PublishedTLSA(TLSAAnswer(True, (TLSARecord(3, 1, 1, bytes(32)),)))
    t._tlsa = tlsa  # type: ignore[assignment]
    try:
        r = await attempt(t, "casual.test")
        assert r.code == 250, r
        assert tlsa.asked == []
        r = await attempt(t, "dane.test")
        assert (r.code, r.enhanced) == (451, "4.7.5"), r
        assert "DANE" in r.text, r
        assert tlsa.asked == [MX_NAME]
        assert [m.rcpt_tos for m in rx.messages()] == [("a@casual.test",)]
    finally:
        await t.close()
