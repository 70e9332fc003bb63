"""Each SMTP stage waits for its own RFC 5321 4.5.3.2 timeout, and says which one fired.

A scripted server stalls at one stage; that stage's timeout is short and every
other stage's is long, so the deferral can only come from the stage under
test, and its reply must name it (issue 10, Deliver 3).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from mailpipe.contracts.config import SMTPTimeouts
from mailpipe.relay.classify import classify
from mailpipe.relay.delivery import SMTPTransport
from mailpipe.relay.ports import Envelope, Stage

from .conftest import make_config

HOST = "127.0.0.1"
SHORT = 1.5  # the stalled stage's timeout (the transport's watchdog ticks every second)
LONG = 60.0  # every other stage's: far beyond the test's own bound
BOUND = 20.0  # the test gives up after this: only the short timeout can fire within it
BIG_MESSAGE = 32 * 1024 * 1024  # beyond any socket buffer: writing it blocks when unread


class StallingServer:
    """Speaks SMTP (no PIPELINING) until `stall_at`, then reads on but never answers;
    "data block" stops reading once DATA is accepted, so the message cannot be sent."""

    def __init__(self, stall_at: str) -> None:
        self.stall_at = stall_at
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, HOST, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        for w in self.writers:
            w.close()
        self.server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        stall = self.stall_at
        if stall != "greeting":
            writer.write(b"220 stall.test ESMTP\r\n")
        stalled = stall == "greeting"
        try:
            while line := await reader.readline():
                verb = line.split(b" ", 1)[0].split(b":", 1)[0].strip().upper().decode()
                if stalled or verb.lower() == stall:
                    stalled = True
                    continue
                if verb == "EHLO":
                    writer.write(b"250-stall.test\r\n250 8BITMIME\r\n")
                elif verb == "DATA":
                    if stall == "data initiation":
                        stalled = True
                        continue
                    writer.write(b"354 go ahead\r\n")
                    if stall == "data block":
                        await asyncio.Event().wait()  # read nothing more, ever
                    await reader.readuntil(b"\r\n.\r\n")
                    if stall != "data termination":
                        writer.write(b"250 2.0.0 queued\r\n")
                    stalled = stall == "data termination"
                else:
                    writer.write(b"250 2.0.0 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return


FIELDS = {
    "greeting": "greeting_seconds",
    "ehlo": "ehlo_seconds",
    "mail": "mail_seconds",
    "rcpt": "rcpt_seconds",
    "data initiation": "data_init_seconds",
    "data block": "data_block_seconds",
    "data termination": "data_termination_seconds",
}
STAGES = {  # the stage each timeout is reported under (a session timeout loses the connection)
    "greeting": Stage.GREETING,
    "ehlo": Stage.EHLO,
    "mail": Stage.LOST,
    "rcpt": Stage.LOST,
    "data initiation": Stage.LOST,
    "data block": Stage.LOST,
    "data termination": Stage.LOST,
}


def transport(port: int, stalled_field: str) -> SMTPTransport:
    timeouts = dict.fromkeys(SMTPTimeouts.model_fields, LONG)
    timeouts[stalled_field] = SHORT
    return SMTPTransport(
        make_config(
            routes={"stall.test": [{"host": HOST, "port": port}]},
            tls={"mode": "disabled"},
            egress=[{"address": HOST, "helo": "relay.test"}],
            delivery={"allow_private_destinations": True, "timeouts": timeouts},
        )
    )


@pytest.fixture
async def server_for() -> AsyncIterator[list[StallingServer]]:
    servers: list[StallingServer] = []
    yield servers
    for s in servers:
        await s.stop()


@pytest.mark.faults
@pytest.mark.parametrize("stage", list(FIELDS))
async def test_a_stalled_stage_times_out_with_its_own_timeout_named(
    server_for: list[StallingServer], stage: str
) -> None:
    server = StallingServer(stage)
    server_for.append(server)
    t = transport(await server.start(), FIELDS[stage])
    size = BIG_MESSAGE if stage == "data block" else 100
    message = b"Subject: x\r\n\r\n" + b"x" * size + b"\r\n"
    env = Envelope("stall.test", "s@sender.test", ("a@stall.test",), message, HOST, "relay.test")
    try:
        result = await asyncio.wait_for(t.deliver(env), BOUND)
    finally:
        await t.close()
    r = result.replies["a@stall.test"]
    assert (r.code, r.enhanced) == (451, "4.4.2"), r
    assert f"within {SHORT:g} s ({stage} timeout)" in r.text, r.text
    assert result.detail["a@stall.test"] == STAGES[stage]
    assert classify(r, result.detail["a@stall.test"]).disposition.value == "deferred"


@pytest.mark.faults
async def test_a_connect_that_never_completes_times_out_as_the_connect_stage() -> None:
    # A listener that never accepts, its backlog filled: the next SYN is dropped,
    # so the connection neither succeeds nor fails until the connect timeout.
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex((HOST, port))
        fillers.append(filler)
    t = transport(port, "connect_seconds")
    env = Envelope("stall.test", "s@sender.test", ("a@stall.test",), b"x\r\n", HOST, "relay.test")
    try:
        result = await asyncio.wait_for(t.deliver(env), BOUND)
    finally:
        await t.close()
        for s in (*fillers, listener):
            s.close()
    r = result.replies["a@stall.test"]
    assert (r.code, r.enhanced) == (421, "4.4.1"), r
    assert f"within {SHORT:g} s (connect timeout)" in r.text, r.text
    assert result.detail["a@stall.test"] == Stage.CONNECT
