"""Issue 10 findings 6 and 9, the transport's part: every recipient's reply comes
with the SMTP stage that gave it (`TransactionResult.detail[recipient]`).

The same `554 5.1.1` means "no such mailbox" after RCPT but "this host refuses
you" in the greeting, and a `550 5.7.1` after RCPT concerns that recipient
while after MAIL or DATA it concerns the sender: the classifier can only
judge right if it knows where the reply came from. A scripted loopback server
answers each stage as told.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from mailpipe.relay.delivery import SMTPTransport
from mailpipe.relay.ports import Envelope, TransactionResult

from .conftest import make_config

pytestmark = pytest.mark.security

HOST = "127.0.0.1"


@dataclass
class Script:
    greeting: str = "220 stage.test ESMTP"
    ehlo: str = "250-stage.test\r\n250 PIPELINING"
    mail: str = "250 2.1.0 ok"
    rcpt: dict[str, str] = field(default_factory=dict)  # local part -> reply
    data: str = "354 go ahead"
    final: str = "250 2.0.0 queued"
    starttls: str = "454 4.7.0 TLS not available due to temporary reason"


async def serve(script: Script) -> tuple[asyncio.Server, int]:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(script.greeting.encode() + b"\r\n")
        in_data = False
        try:
            while line := await reader.readline():
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        writer.write(script.final.encode() + b"\r\n")
                    continue
                verb = line[:4].upper()
                if verb == b"EHLO":
                    answer = script.ehlo
                elif verb == b"MAIL":
                    answer = script.mail
                elif verb == b"RCPT":
                    local = line.decode().split("<", 1)[1].split("@", 1)[0]
                    answer = script.rcpt.get(local, "250 2.1.5 ok")
                elif verb == b"DATA":
                    answer = script.data
                    in_data = script.data.startswith("354")
                elif verb == b"STAR":
                    answer = script.starttls
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    answer = "250 ok"
                writer.write(answer.encode() + b"\r\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, HOST, 0)
    return server, int(server.sockets[0].getsockname()[1])


Deliver = Callable[..., Awaitable[TransactionResult]]


@pytest.fixture
async def deliver() -> AsyncIterator[Deliver]:
    servers: list[asyncio.Server] = []

    async def run(
        script: Script, *locals_: str, domain: str = "stage.test", tls: str = "disabled"
    ) -> TransactionResult:
        server, port = await serve(script)
        servers.append(server)
        t = SMTPTransport(
            make_config(
                routes={"stage.test": [{"host": HOST, "port": port}]},
                tls={"mode": tls},
                egress=[{"address": HOST, "helo": "relay.test"}],
                delivery={"allow_private_destinations": True},  # loopback receivers: opted in
            )
        )
        rcpts = tuple(f"{lp}@{domain}" for lp in locals_)
        env = Envelope(domain, "s@sender.test", rcpts, b"Subject: s\r\n\r\nx\r\n", HOST, "r")
        try:
            return await asyncio.wait_for(t.deliver(env), 30)
        finally:
            await t.close()

    yield run
    for s in servers:
        s.close()


async def test_greeting_refusal_is_marked_greeting(deliver: Deliver) -> None:
    result = await deliver(Script(greeting="554 5.1.1 go away"), "a")
    assert result.replies["a@stage.test"].code == 554
    assert result.detail == {"a@stage.test": "greeting"}


async def test_ehlo_refusal_is_marked_ehlo(deliver: Deliver) -> None:
    result = await deliver(Script(ehlo="550 5.7.1 not you"), "a")
    assert result.replies["a@stage.test"].code == 550
    assert result.detail == {"a@stage.test": "ehlo"}


async def test_transaction_stages_per_recipient(deliver: Deliver) -> None:
    script = Script(rcpt={"no": "550 5.7.1 Recipient address rejected: Access denied"})
    result = await deliver(script, "ok", "no")
    assert [r.code for r in result.replies.values()] == [250, 550]
    assert result.detail == {"ok@stage.test": "message", "no@stage.test": "rcpt"}


async def test_mail_and_data_refusals_are_marked(deliver: Deliver) -> None:
    mail = await deliver(Script(mail="550 5.7.1 sender blocked"), "a", "b")
    assert mail.detail == {"a@stage.test": "mail", "b@stage.test": "mail"}
    data = await deliver(Script(data="554 5.7.1 no"), "a")
    assert data.detail == {"a@stage.test": "data"}


async def test_dns_refusal_is_marked_dns(deliver: Deliver) -> None:
    result = await deliver(Script(), "a", domain="[127.0.0.1]")
    assert result.detail == {"a@[127.0.0.1]": "dns"}


STARTTLS_OFFERED = "250-stage.test\r\n250-PIPELINING\r\n250 STARTTLS"


@pytest.mark.faults
async def test_starttls_refused_opportunistic_goes_in_clear(deliver: Deliver) -> None:
    result = await deliver(Script(ehlo=STARTTLS_OFFERED), "a", tls="opportunistic")
    assert result.replies["a@stage.test"].code == 250
    assert result.detail == {"a@stage.test": "message"}


@pytest.mark.faults
async def test_starttls_refused_required_defers_as_tls(deliver: Deliver) -> None:
    result = await deliver(Script(ehlo=STARTTLS_OFFERED), "a", tls="required")
    r = result.replies["a@stage.test"]
    assert (r.code, r.enhanced) == (451, "4.7.5")
    assert "454" in r.text
    assert result.detail == {"a@stage.test": "tls"}
