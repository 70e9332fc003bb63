"""STARTTLS policy and large messages through the SMTP transport, against the
aiosmtpd receiver on loopback (a real TLS handshake with a generated CA).

After STARTTLS the connection is handed from aiosmtplib to the session
protocol, so these tests prove that the hand-over works on a TLS transport,
that `required` never sends in clear, and that flow control carries a
message far larger than the socket buffers.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import pytest

from mailpipe.devstack.certs import generate
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.relay.delivery import SMTPTransport
from mailpipe.relay.ports import Envelope, SMTPReply

from .conftest import make_config

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    pki = generate(tmp_path_factory.mktemp("pki"))  # serving cert for 127.0.0.1
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.serving_cert, pki.serving_key)
    return context


def transport(rx: SMTPReceiver, mode: str) -> SMTPTransport:
    return SMTPTransport(
        make_config(
            routes={"dest.test": [{"host": HOST, "port": rx.port}]},
            tls={"mode": mode, "verify": False},
            egress=[{"address": HOST, "helo": "relay.test"}],
            delivery={"allow_private_destinations": True},  # loopback receivers: opted in
        )
    )


def envelope(message: bytes = b"Subject: tls\r\n\r\nhello\r\n") -> Envelope:
    return Envelope("dest.test", "s@sender.test", ("a@dest.test",), message, HOST, "relay.test")


async def deliver_once(rx: SMTPReceiver, mode: str, message: bytes | None = None) -> SMTPReply:
    """One delivery to `rx` on a transport of its own; the reply for a@dest.test."""
    t = transport(rx, mode)
    try:
        env = envelope() if message is None else envelope(message)
        result = await asyncio.wait_for(t.deliver(env), 60)  # a guard against hangs
    finally:
        await t.close()
    return result.replies["a@dest.test"]


@pytest.mark.parametrize("mode", ["opportunistic", "required"])
async def test_starttls_used_when_offered(
    smtp_receiver: Callable[..., SMTPReceiver], server_tls: ssl.SSLContext, mode: str
) -> None:
    rx = smtp_receiver(HOST, tls=server_tls)
    t = transport(rx, mode)
    try:
        for _ in range(2):  # the second transaction reuses the TLS session
            result = await asyncio.wait_for(t.deliver(envelope()), 20)
            assert result.replies["a@dest.test"].code == 250
    finally:
        await t.close()
    messages = rx.messages()
    assert len(messages) == 2 and all(m.tls for m in messages)
    assert t.connections_opened == 1


async def test_required_tls_not_offered_is_deferred_unsent(
    smtp_receiver: Callable[..., SMTPReceiver],
) -> None:
    rx = smtp_receiver(HOST, tls=None)
    r = await deliver_once(rx, "required")
    assert (r.code, r.enhanced) == (451, "4.7.5")
    assert rx.messages() == []


async def test_opportunistic_without_offer_sends_in_clear(
    smtp_receiver: Callable[..., SMTPReceiver],
) -> None:
    rx = smtp_receiver(HOST, tls=None)
    assert (await deliver_once(rx, "opportunistic")).code == 250
    assert [m.tls for m in rx.messages()] == [False]


async def test_large_message_over_tls_arrives_whole(
    smtp_receiver: Callable[..., SMTPReceiver], server_tls: ssl.SSLContext
) -> None:
    rx = smtp_receiver(HOST, tls=server_tls)
    body = b"".join(b"%07d " % i + b"x" * 70 + b"\r\n" for i in range(80_000))  # ~6 MB
    message = b"Subject: big\r\n\r\n" + body
    assert (await deliver_once(rx, "required", message)).code == 250
    (received,) = rx.messages()
    assert received.tls
    assert received.data.replace(b"\r\n", b"\n") == message.replace(b"\r\n", b"\n")
