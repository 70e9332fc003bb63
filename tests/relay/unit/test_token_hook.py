"""The SMTP session takes the record's rate token on a greeted connection, right
before MAIL FROM, on every path: new connection, pooled one, pipelined or not;
never when no MAIL FROM is written; a stale pooled connection's retry takes a
new one after the new connection's greeting (ARCHITECTURE.md, "Limits hold pool-wide")."""

from __future__ import annotations

import dataclasses

import pytest

from mailpipe.relay.ports import Envelope

from .test_smtp_session import (
    GroupServer,
    LockstepServer,
    Script,
    TransportFor,
    _Server,
    envelope,
    transport_for,
)

__all__ = ["transport_for"]  # the fixture, shared with the session tests


class RecordingGate:
    """A `ports.RateGate` that notes what the server had seen when the token was taken."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.calls: list[str] = []
        self.seen: list[tuple[int, list[str]]] = []  # (connections, commands) at each take

    async def before_mail(self) -> None:
        self.calls.append("take")
        self.seen.append((self.server.connections, list(self.server.commands)))

    def unused(self) -> None:
        self.calls.append("unused")

    def renew(self) -> None:
        self.calls.append("renew")


def gated(gate: RecordingGate, *rcpts: str, message: bytes | None = None) -> Envelope:
    env = envelope(*rcpts) if message is None else envelope(*rcpts, message=message)
    return dataclasses.replace(env, gate=gate)


def _mails(commands: list[str]) -> int:
    return sum(c.startswith("MAIL") for c in commands)


@pytest.mark.parametrize("server_type", [GroupServer, LockstepServer])
async def test_the_token_is_taken_after_ehlo_and_before_mail_from_on_new_and_pooled_connections(
    transport_for: TransportFor, server_type: type[_Server]
) -> None:
    server = server_type(Script())
    t = await transport_for(server)
    gates = [RecordingGate(server) for _ in range(3)]
    for gate in gates:
        assert (await t.deliver(gated(gate, "a@dest.test"))).replies["a@dest.test"].code == 250
    assert server.connections == 1  # the second and third went on the pooled connection
    for sent_before, gate in enumerate(gates):
        assert gate.calls == ["take"]
        (_, commands) = gate.seen[0]
        assert commands[0].startswith("EHLO")  # greeted before the token
        assert _mails(commands) == sent_before  # and its own MAIL FROM not yet written
    assert _mails(server.commands) == 3


async def test_no_token_when_no_mail_from_is_written(transport_for: TransportFor) -> None:
    server = GroupServer(Script(size=100))
    t = await transport_for(server)
    gate = RecordingGate(server)
    result = await t.deliver(gated(gate, "a@dest.test", message=b"x" * 200 + b"\r\n"))
    assert result.replies["a@dest.test"].code == 552  # refused by SIZE, without asking
    assert gate.calls == []

    closed = GroupServer(Script())
    t = await transport_for(closed)
    await closed.stop()  # nobody listening: the connection is refused
    gate = RecordingGate(closed)
    result = await t.deliver(gated(gate, "b@dest.test"))
    assert result.replies["b@dest.test"].code == 421
    assert gate.calls == []


async def test_a_stale_pooled_connection_retry_takes_a_new_token_after_the_new_greeting(
    transport_for: TransportFor,
) -> None:
    server = GroupServer(Script())
    t = await transport_for(server)
    await t.deliver(envelope("a@dest.test"))
    server.drop_clients()  # the MX closed the idle connection
    gate = RecordingGate(server)
    assert (await t.deliver(gated(gate, "a@dest.test"))).replies["a@dest.test"].code == 250
    # Found closed before MAIL FROM (token given back) or lost after it (kept,
    # counted): either way the retry takes its own token on the new connection.
    assert gate.calls in (["take", "unused", "renew", "take"], ["take", "renew", "take"])
    connections, commands = gate.seen[-1]
    assert connections == 2
    assert commands[-1].startswith("EHLO")
