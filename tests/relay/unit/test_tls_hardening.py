"""Issue 10 findings 6 (TLS) and 10: STARTTLS failures and certificate names.

- an opportunistic STARTTLS whose handshake fails is retried in clear (it used
  to become a 421 that backed the IP off and never delivered);
- with TLS required the same failure defers, nothing sent, with the TLS reply
  `451 4.7.5` rather than a 421 that reads as "this IP is blocked";
- `tls.verify: true` checks the certificate against the MX host NAME (what
  MTA-STS and DANE expect), not the address the relay connected to.

Real handshakes against the aiosmtpd receiver on loopback; the test CA is
trusted through SSL_CERT_FILE, which `ssl.create_default_context()` reads.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.relay.delivery import MXResolver, Route, SMTPTransport
from mailpipe.relay.ports import Envelope, SMTPReply

from ..mx_certs import Certs, make_certs, server_context
from .conftest import make_config

pytestmark = pytest.mark.security

HOST = "127.0.0.1"
MX_NAME = "mx.alpha.test"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("mxpki"), MX_NAME)


def broken_context(certs: Certs) -> ssl.SSLContext:
    """Offers STARTTLS, then fails every handshake: only a NULL cipher, which no
    client accepts (a real-world stand-in for an MX with an ancient TLS stack)."""
    context = server_context(certs)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("NULL-SHA256:@SECLEVEL=0")
    return context


class NamedMX(MXResolver):
    """The route an MX lookup gives: connect to an address, known by a host name."""

    def __init__(self, config: Any, port: int, name: str) -> None:
        super().__init__(config)
        self.route = Route(HOST, port, name)

    async def routes(self, domain: str) -> list[Route]:
        return [self.route]


async def deliver(rx: SMTPReceiver, mode: str, *, verify: bool, name: str = MX_NAME) -> SMTPReply:
    config = make_config(
        tls={"mode": mode, "verify": verify},
        egress=[{"address": HOST, "helo": "relay.test"}],
        delivery={"allow_private_destinations": True},  # a loopback receiver: opted in
    )
    t = SMTPTransport(config, NamedMX(config, rx.port, name))
    env = Envelope(
        "alpha.test", "s@sender.test", ("a@alpha.test",), b"Subject: t\r\n\r\nx\r\n", HOST, "r"
    )
    try:
        result = await asyncio.wait_for(t.deliver(env), 60)
    finally:
        await t.close()
    return result.replies["a@alpha.test"]


@pytest.mark.faults  # a broken peer: its TLS handshake always fails
async def test_opportunistic_handshake_failure_falls_back_to_clear(
    smtp_receiver: Callable[..., SMTPReceiver], certs: Certs
) -> None:
    rx = smtp_receiver(HOST, tls=broken_context(certs))
    r = await deliver(rx, "opportunistic", verify=False)
    assert r.code == 250, r
    assert [m.tls for m in rx.messages()] == [False]


@pytest.mark.faults  # a broken peer: its TLS handshake always fails
async def test_required_tls_handshake_failure_defers_unsent(
    smtp_receiver: Callable[..., SMTPReceiver], certs: Certs
) -> None:
    rx = smtp_receiver(HOST, tls=broken_context(certs))
    r = await deliver(rx, "required", verify=False)
    assert (r.code, r.enhanced) == (451, "4.7.5"), r
    assert "TLS" in r.text
    assert rx.messages() == []


async def test_verify_checks_the_mx_host_name_not_its_address(
    smtp_receiver: Callable[..., SMTPReceiver], certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    rx = smtp_receiver(HOST, tls=server_context(certs))
    r = await deliver(rx, "required", verify=True)
    assert r.code == 250, r
    assert [m.tls for m in rx.messages()] == [True]


async def test_verify_refuses_a_certificate_for_another_name(
    smtp_receiver: Callable[..., SMTPReceiver], certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    rx = smtp_receiver(HOST, tls=server_context(certs))
    r = await deliver(rx, "required", verify=True, name="mx.other.test")
    assert (r.code, r.enhanced) == (451, "4.7.5"), r
    assert "mx.other.test" in r.text and "certificate" in r.text.lower()
    assert rx.messages() == []


async def test_pooled_connection_is_not_reused_for_another_mx_name(
    smtp_receiver: Callable[..., SMTPReceiver], certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection verified for mx.alpha.test is not a verified connection for
    mx.other.test, even at the same address."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    rx = smtp_receiver(HOST, tls=server_context(certs))
    config = make_config(
        tls={"mode": "required", "verify": True},
        egress=[{"address": HOST, "helo": "relay.test"}],
        delivery={"allow_private_destinations": True},  # a loopback receiver: opted in
    )
    resolver = NamedMX(config, rx.port, MX_NAME)
    t = SMTPTransport(config, resolver)
    env = Envelope(
        "alpha.test", "s@sender.test", ("a@alpha.test",), b"Subject: t\r\n\r\nx\r\n", HOST, "r"
    )
    try:
        first = await asyncio.wait_for(t.deliver(env), 60)
        resolver.route = Route(HOST, rx.port, "mx.other.test")
        second = await asyncio.wait_for(t.deliver(env), 60)
    finally:
        await t.close()
    assert first.replies["a@alpha.test"].code == 250
    assert (second.replies["a@alpha.test"].code, second.replies["a@alpha.test"].enhanced) == (
        451,
        "4.7.5",
    )
    assert len(rx.messages()) == 1
