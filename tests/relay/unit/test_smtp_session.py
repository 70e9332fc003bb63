"""The SMTP transport's transactions against scripted loopback servers.

`GroupServer` answers nothing until it has the whole MAIL/RCPT/DATA group, so
a client that does not pipeline when PIPELINING is offered hangs and fails;
`LockstepServer` does not offer it and records any command sent before the
previous reply (a client pipelining uninvited). Both un-stuff and keep every
message body, so transparency and the one-message-per-transaction rule are
checked on what actually crossed the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from mailpipe.contracts.config import SMTPTimeouts
from mailpipe.relay.delivery import SMTPTransport
from mailpipe.relay.delivery.replies import ReplyError, ReplyParser
from mailpipe.relay.delivery.session import QUIT_TIMEOUT_SECONDS, dot_stuff
from mailpipe.relay.ports import Envelope

from .conftest import make_config

HOST = "127.0.0.1"
STAGE_TIMEOUTS = list(SMTPTimeouts.model_fields)  # every stage's timeout field


@dataclass
class Script:
    rcpt: dict[str, str] = field(default_factory=dict)  # recipient -> RCPT reply
    mail: str = "250 2.1.0 ok"
    data: str = "354 go ahead"
    final: str = "250 2.0.0 queued"
    size: int | None = None
    drop_after_body: bool = False  # close without the final reply
    silent: bool = False  # never answer a transaction (a hung MX)
    silent_quit: bool = False  # never answer QUIT


class _Server:
    pipelining = True

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.bodies: list[bytes] = []
        self.commands: list[str] = []
        self.groups: list[list[str]] = []  # commands that arrived in one read
        self.violations: list[str] = []
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, HOST, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        self.drop_clients()
        self.server.close()
        await self.server.wait_closed()

    def drop_clients(self) -> None:
        for writer in self.writers:
            writer.close()

    def _ehlo(self) -> bytes:
        lines = ["250-scripted.test"]
        if self.pipelining:
            lines.append("250-PIPELINING")
        if self.script.size:
            lines.append(f"250-SIZE {self.script.size}")
        lines.append("250 8BITMIME")
        return ("\r\n".join(lines) + "\r\n").encode()

    def _answer(self, command: str) -> str:
        verb = command.split(" ", 1)[0].split(":", 1)[0].upper()
        if verb == "MAIL":
            return self.script.mail
        if verb == "RCPT":
            address = command.partition("<")[2].partition(">")[0]
            return self.script.rcpt.get(address, "250 2.1.5 ok")
        if verb == "DATA":
            return self.script.data
        if verb == "RSET":
            return "250 2.0.0 reset"
        if verb == "QUIT":
            return "221 2.0.0 bye"
        return "502 5.5.1 unknown"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        writer.write(b"220 scripted.test ESMTP\r\n")
        pending: list[str] = []
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buffered = chunk
                while not buffered.endswith(b"\r\n"):
                    buffered += await reader.read(65536)
                lines = buffered.decode().split("\r\n")[:-1]
                self.groups.append(lines)
                if not self.pipelining and len(lines) > 1:
                    self.violations.append(" | ".join(lines))
                for line in lines:
                    self.commands.append(line)
                    verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
                    if verb == "EHLO":
                        writer.write(self._ehlo())
                        continue
                    if self.script.silent or (self.script.silent_quit and verb == "QUIT"):
                        continue
                    pending.append(self._answer(line))
                    if self.pipelining and verb in ("MAIL", "RCPT"):
                        continue  # RFC 2920: answers may wait for the group's end
                    writer.write(("\r\n".join(pending) + "\r\n").encode())
                    pending = []
                    if verb == "QUIT":
                        writer.close()
                        return
                    if verb == "DATA" and self.script.data.startswith("354"):
                        body = await reader.readuntil(b"\r\n.\r\n")
                        self.bodies.append(body[: -len(b".\r\n")].replace(b"\r\n..", b"\r\n."))
                        if self.script.drop_after_body:
                            writer.close()
                            return
                        writer.write((self.script.final + "\r\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return


class GroupServer(_Server):
    pipelining = True


class LockstepServer(_Server):
    pipelining = False


TransportFor = Callable[[_Server], Awaitable[SMTPTransport]]


@pytest.fixture
async def transport_for() -> AsyncIterator[TransportFor]:
    made: list[tuple[SMTPTransport, _Server]] = []

    async def make(server: _Server) -> SMTPTransport:
        port = await server.start()
        config = make_config(
            routes={"dest.test": [{"host": HOST, "port": port}]},
            tls={"mode": "disabled"},
            egress=[{"address": HOST, "helo": "relay.test"}],
            delivery={  # loopback receivers: opted in; short stage timeouts
                "allow_private_destinations": True,
                "timeouts": dict.fromkeys(STAGE_TIMEOUTS, 3),
            },
        )
        t = SMTPTransport(config)
        made.append((t, server))
        return t

    yield make
    for t, server in made:
        await t.close()
        await server.stop()


def envelope(*rcpts: str, message: bytes = b"Subject: x\r\n\r\nbody\r\n") -> Envelope:
    return Envelope("dest.test", "s@sender.test", rcpts, message, HOST, "relay.test")


MIXED = {"b@dest.test": "550 5.1.1 no such user", "c@dest.test": "451 4.2.1 busy"}


async def test_pipelined_group_with_per_recipient_replies(transport_for: TransportFor) -> None:
    server = GroupServer(Script(rcpt=dict(MIXED)))
    t = await transport_for(server)
    message = b"Subject: x\r\n\r\n.leading dot\r\nmiddle\r\n..two\r\n"
    result = await asyncio.wait_for(
        t.deliver(envelope("a@dest.test", "b@dest.test", "c@dest.test", message=message)), 10
    )
    codes = {r: rep.code for r, rep in result.replies.items()}
    assert codes == {"a@dest.test": 250, "b@dest.test": 550, "c@dest.test": 451}
    assert result.replies["b@dest.test"].enhanced == "5.1.1"
    group = next(g for g in server.groups if g[0].startswith("MAIL"))
    assert [c.split(":")[0] for c in group] == [
        "MAIL FROM",
        "RCPT TO",
        "RCPT TO",
        "RCPT TO",
        "DATA",
    ]
    assert server.bodies == [message]


async def test_lockstep_without_pipelining(transport_for: TransportFor) -> None:
    server = LockstepServer(Script(rcpt=dict(MIXED)))
    t = await transport_for(server)
    result = await t.deliver(envelope("a@dest.test", "b@dest.test", "c@dest.test"))
    assert {r: rep.code for r, rep in result.replies.items()} == {
        "a@dest.test": 250,
        "b@dest.test": 550,
        "c@dest.test": 451,
    }
    assert server.violations == []
    assert len(server.bodies) == 1


@pytest.mark.parametrize("server_type", [GroupServer, LockstepServer])
async def test_mail_refused_decides_every_recipient(
    transport_for: TransportFor, server_type: type[_Server]
) -> None:
    server = server_type(Script(mail="550 5.7.1 sender blocked", data="503 5.5.1 no recipients"))
    t = await transport_for(server)
    result = await t.deliver(envelope("a@dest.test", "b@dest.test"))
    assert {rep.code for rep in result.replies.values()} == {550}
    assert server.bodies == []
    assert server.commands[-1] == "RSET"
    if server_type is LockstepServer:
        assert not any(c.startswith("RCPT") for c in server.commands)


@pytest.mark.parametrize("server_type", [GroupServer, LockstepServer])
async def test_no_recipient_accepted_sends_no_message(
    transport_for: TransportFor, server_type: type[_Server]
) -> None:
    script = Script(rcpt={"a@dest.test": "550 5.1.1 unknown"}, data="554 5.5.1 no valid recipients")
    server = server_type(script)
    t = await transport_for(server)
    result = await t.deliver(envelope("a@dest.test"))
    assert result.replies["a@dest.test"].code == 550
    assert server.bodies == []


async def test_data_refused_decides_accepted_recipients(transport_for: TransportFor) -> None:
    server = GroupServer(Script(data="451 4.3.0 try later"))
    t = await transport_for(server)
    result = await t.deliver(envelope("a@dest.test"))
    assert result.replies["a@dest.test"].code == 451
    assert server.commands[-1] == "RSET"


async def test_size_limit_refused_without_sending(transport_for: TransportFor) -> None:
    server = GroupServer(Script(size=100))
    t = await transport_for(server)
    result = await t.deliver(envelope("a@dest.test", message=b"x" * 200 + b"\r\n"))
    assert result.replies["a@dest.test"].code == 552
    assert result.replies["a@dest.test"].enhanced == "5.3.4"
    assert not any(c.startswith("MAIL") for c in server.commands)


async def test_connection_reused_and_dropped_one_replaced(transport_for: TransportFor) -> None:
    server = GroupServer(Script())
    t = await transport_for(server)
    for _ in range(3):
        assert (await t.deliver(envelope("a@dest.test"))).replies["a@dest.test"].code == 250
    assert server.connections == 1
    server.drop_clients()  # an MX closing idle connections
    result = await t.deliver(envelope("a@dest.test"))
    assert result.replies["a@dest.test"].code == 250
    assert server.connections == 2
    assert len(server.bodies) == 4


async def test_lost_after_body_is_deferred_not_retried(transport_for: TransportFor) -> None:
    server = GroupServer(Script(drop_after_body=True))
    t = await transport_for(server)
    result = await t.deliver(envelope("a@dest.test"))
    r = result.replies["a@dest.test"]
    assert (r.code, r.enhanced) == (451, "4.4.2")
    assert len(server.bodies) == 1  # not sent a second time by the transport


async def test_silent_server_times_out_as_a_deferral(transport_for: TransportFor) -> None:
    server = GroupServer(Script(silent=True))
    t = await transport_for(server)  # stage timeouts 3 s, watchdog every second
    result = await asyncio.wait_for(t.deliver(envelope("a@dest.test")), 10)
    r = result.replies["a@dest.test"]
    assert (r.code, r.enhanced) == (451, "4.4.2")
    assert "no reply to MAIL within 3 s (mail timeout)" in r.text


async def test_closing_the_transport_is_not_held_by_a_peer_silent_at_quit(
    transport_for: TransportFor,
) -> None:
    """The pool's QUITs on shutdown wait for their reply within the QUIT timeout:
    the watchdog that enforces it stops only after them."""
    server = GroupServer(Script(silent_quit=True))
    t = await transport_for(server)
    assert (await t.deliver(envelope("a@dest.test"))).replies["a@dest.test"].code == 250
    await asyncio.wait_for(t.close(), QUIT_TIMEOUT_SECONDS + 10)
    assert server.commands[-1] == "QUIT"


def test_reply_parser_splits_joins_and_refuses_garbage() -> None:
    p = ReplyParser()
    assert p.feed(b"250-first\r\n250-sec") == []
    out = p.feed(b"ond\r\n250 last\r\n354 go\r\n2")
    assert [(r.code, r.text) for r in out] == [(250, "first\nsecond\nlast"), (354, "go")]
    assert [r.code for r in p.feed(b"50 2.0.0 ok\r\n")] == [250]
    assert p.feed(b"221\r\n")[0].code == 221
    with pytest.raises(ReplyError):
        ReplyParser().feed(b"hello there\r\n")


def test_dot_stuffing() -> None:
    assert dot_stuff(b".a\r\nb\r\n.\r\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert dot_stuff(b"no newline") == b"no newline\r\n.\r\n"
