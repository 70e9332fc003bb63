"""Issue 10 finding 6 (IDN): `u@bücher.test` goes out with its domain as an
A-label and needs no SMTPUTF8; only a non-ASCII local part does (RFC 6531 3.2).

It used to be refused `553 5.6.7 ... does not offer SMTPUTF8` by a server that
would have taken `u@xn--bcher-kva.test`. A scripted loopback server without
SMTPUTF8 records exactly what crossed the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mailpipe.relay.delivery import SMTPTransport
from mailpipe.relay.ports import Envelope

from .conftest import make_config

pytestmark = pytest.mark.security

HOST = "127.0.0.1"


class PlainServer:
    """ESMTP with PIPELINING and 8BITMIME but no SMTPUTF8; accepts everything."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, HOST, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 plain.test ESMTP\r\n")
        in_data = False
        try:
            while line := await reader.readline():
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        writer.write(b"250 2.0.0 queued\r\n")
                    continue
                command = line.decode("utf-8", "replace").rstrip("\r\n")
                self.commands.append(command)
                verb = command[:4].upper()
                if verb == "EHLO":
                    writer.write(b"250-plain.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == "DATA":
                    in_data = True
                    writer.write(b"354 go ahead\r\n")
                elif verb == "QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 2.0.0 ok\r\n")
                await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[tuple[PlainServer, int]]:
    s = PlainServer()
    port = await s.start()
    yield s, port
    await s.stop()


async def send(port: int, sender: str, *recipients: str) -> dict[str, tuple[int, str]]:
    domain = recipients[0].rpartition("@")[2]
    t = SMTPTransport(
        make_config(
            routes={"bücher.test": [{"host": HOST, "port": port}]},
            tls={"mode": "disabled"},
            egress=[{"address": HOST, "helo": "relay.test"}],
            delivery={"allow_private_destinations": True},  # loopback receivers: opted in
        )
    )
    env = Envelope(domain, sender, recipients, b"Subject: idn\r\n\r\nhello\r\n", HOST, "relay.test")
    try:
        result = await asyncio.wait_for(t.deliver(env), 30)
    finally:
        await t.close()
    return {r: (rep.code, rep.text) for r, rep in result.replies.items()}


async def test_idn_domain_goes_as_a_label_without_smtputf8(
    server: tuple[PlainServer, int],
) -> None:
    s, port = server
    replies = await send(port, "news@bücher.test", "u@bücher.test", "v@BÜCHER.test")
    assert {r: code for r, (code, _) in replies.items()} == {
        "u@bücher.test": 250,
        "v@BÜCHER.test": 250,
    }
    mail = [c for c in s.commands if c.startswith("MAIL")]
    rcpt = [c for c in s.commands if c.startswith("RCPT")]
    assert mail == ["MAIL FROM:<news@xn--bcher-kva.test>"]  # no SMTPUTF8 parameter
    assert rcpt == ["RCPT TO:<u@xn--bcher-kva.test>", "RCPT TO:<v@xn--bcher-kva.test>"]


async def test_utf8_local_part_still_needs_smtputf8(server: tuple[PlainServer, int]) -> None:
    s, port = server
    replies = await send(port, "news@sender.test", "müller@bücher.test")
    code, text = replies["müller@bücher.test"]
    assert code == 553 and text.startswith("5.6.7")
    assert not any(c.startswith("MAIL") for c in s.commands)
