"""A partition changing hands sends no record twice (issue 10: "a message sent
twice to a person is a defect as serious as a lost one").

The engine with in-memory ports, driven the way the Kafka source drives it
(`Revoking` when a rebalance starts, `Revoked` and `Assigned` when it ends),
one mechanism per test:

- a rebalance (a relay joining or leaving, a roll): the engine holds new work
  of the partitions that may move, waits for what runs on them, and answers
  with the commit *and* the offsets finished past it; the next owner, told
  of those, sends only what was not finished. Before: the commit stopped at
  the lowest unfinished offset and the new owner sent everything past it again;
- an eviction while the broker is away (commits fail, the group drops the
  relay, it re-reads its partitions from the last commit): records it finished
  meanwhile, even one whose attempt completes after the eviction, are not
  sent again. Before: the whole read window went out twice (the fault test
  saw 100 of 100);
- the one window left: an attempt still running when the drain gives up
  (DRAIN_SECONDS) on a partition that moves is sent by the new owner too.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest

from mailpipe.relay import engine as engine_module
from mailpipe.relay.fakes import ScriptedTransport
from mailpipe.relay.ports import Assigned, Envelope, Revoking, TopicPartition, TransactionResult

from .conftest import Harness, make_config, record_bytes

TP = TopicPartition("p.outbound", 0)
SLOW = "slow@slow.test"


class GatedTransport(ScriptedTransport):
    """Delivers at once, except to recipients whose gate is closed: their
    transaction is under way until the gate opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []

    async def deliver(self, envelope: Envelope) -> TransactionResult:
        self.started.extend(envelope.recipients)
        for rcpt in envelope.recipients:
            gate = self.gates.get(rcpt)
            if gate is not None:
                await gate.wait()
        return await super().deliver(envelope)

    def sent(self) -> list[str]:
        return [r for e in self.envelopes for r in e.recipients]


class Relay:
    """One relay of the pool, running in the background."""

    def __init__(self) -> None:
        self.h = Harness(make_config())
        self.transport = self.h.engine.dispatch.transport = GatedTransport()
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Relay:
        self.task = asyncio.create_task(self.h.engine.run(self.stop))
        return self

    async def close(self) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task


async def until(done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not done():  # noqa: ASYNC110 — polling a plain predicate
            await asyncio.sleep(0.005)


class Answer:
    """What the engine answered to a `Revoking` (what the source commits)."""

    def __init__(self) -> None:
        self.offsets: dict[TopicPartition, int] | None = None
        self.ahead: dict[TopicPartition, frozenset[int]] = {}

    def __call__(
        self, offsets: dict[TopicPartition, int], ahead: dict[TopicPartition, frozenset[int]]
    ) -> None:
        self.offsets, self.ahead = offsets, ahead


def same_log(new: Relay, old: Relay) -> None:
    """The new owner reads the same partition (from the committed offset, told by `Assigned`)."""
    new.h.source.logs[TP] = list(old.h.source.logs[TP])


async def test_a_rebalance_drains_commits_past_the_finished_and_the_next_owner_skips_them() -> None:
    a = Relay()
    a.transport.gates[SLOW] = gate = asyncio.Event()
    a.h.put(record_bytes(SLOW))  # offset 0: its transaction is under way at the rebalance
    for i in range(1, 6):
        a.h.put(record_bytes(f"u{i}@fast.test"))  # 1-5: finished past the unfinished 0
    a.start()
    try:
        await until(lambda: len(a.transport.sent()) == 5 and SLOW in a.transport.started)
        answer = Answer()
        a.h.source.notify(Revoking((TP,), answer))
        await asyncio.sleep(0.2)
        assert answer.offsets is None  # waits for the running transaction
        a.h.put(record_bytes("late@fast.test"))  # offset 6, read during the rebalance
        await asyncio.sleep(0.1)
        assert "late@fast.test" not in a.transport.started  # held: its partition may move
        gate.set()
        await until(lambda: answer.offsets is not None)
        assert answer.offsets == {TP: 6}  # everything that ran is covered
        a.h.source.revoke([TP])  # the partition went to relay b
        a.h.source.notify(Assigned(()))
        await asyncio.sleep(0.1)
        assert "late@fast.test" not in a.transport.started  # gone: not started here
    finally:
        await a.close()

    b = Relay()
    same_log(b, a)
    b.h.source.positions[TP] = answer.offsets[TP]
    b.h.source.notify(Assigned((TP,), {TP: answer.offsets[TP]}, answer.ahead))
    b.start()
    try:
        await until(lambda: len(b.transport.sent()) == 1)
        await asyncio.sleep(0.1)
    finally:
        await b.close()
    sent = Counter(a.transport.sent() + b.transport.sent())
    expected = [SLOW, "late@fast.test", *(f"u{i}@fast.test" for i in range(1, 6))]
    assert sent == Counter(expected)  # each once


async def test_the_next_owner_skips_what_was_finished_past_a_lower_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The drain gives up on a transaction that outlives it (a slow MX): the
    commit stays at that record, the records finished past it travel as
    finished-ahead offsets, and only the one mid-transaction is sent by both
    (the residual window, RFC 1047's: ARCHITECTURE.md, "Nothing sent twice on a hand-over")."""
    monkeypatch.setattr(engine_module, "DRAIN_SECONDS", 0.2)
    a = Relay()
    a.transport.gates[SLOW] = gate = asyncio.Event()
    a.h.put(record_bytes(SLOW))
    for i in range(1, 6):
        a.h.put(record_bytes(f"u{i}@fast.test"))
    a.start()
    try:
        await until(lambda: len(a.transport.sent()) == 5 and SLOW in a.transport.started)
        answer = Answer()
        a.h.source.notify(Revoking((TP,), answer))
        await until(lambda: answer.offsets is not None)
        assert answer.offsets == {TP: 0}
        assert answer.ahead == {TP: frozenset(range(1, 6))}
        a.h.source.revoke([TP])
        a.h.source.notify(Assigned(()))
        b = Relay()
        same_log(b, a)
        b.h.source.notify(Assigned((TP,), {TP: 0}, answer.ahead))
        b.start()
        try:
            await until(lambda: len(b.transport.sent()) == 1)
            gate.set()  # a's transaction completes after all
            await until(lambda: len(a.transport.sent()) == 6)
            await asyncio.sleep(0.1)
        finally:
            await b.close()
    finally:
        await a.close()
    sent = Counter(a.transport.sent() + b.transport.sent())
    assert {r for r, n in sent.items() if n > 1} == {SLOW}
    assert len(sent) == 6


async def test_an_evicted_relay_does_not_resend_what_it_finished_while_commits_failed() -> None:
    """The broker away: commits fail, the group drops the relay (`Revoked`, no
    `Revoking`: nothing can be committed), offset 2's transaction still under
    way; assigned back, it re-reads from the last commit. Offsets 0, 1, 3, 4
    are skipped; 2's new copy waits for the old one, then is skipped too; the
    first commit that goes through covers them all."""
    a = Relay()
    a.h.source.refuse_commits = True
    a.transport.gates["u2@slow.test"] = gate = asyncio.Event()
    for i in range(5):
        a.h.put(record_bytes(f"u{i}@slow.test" if i == 2 else f"u{i}@fast.test"))
    a.start()
    try:
        await until(lambda: len(a.transport.sent()) == 4 and "u2@slow.test" in a.transport.started)
        a.h.source.revoke([TP])  # evicted while the broker was away
        await until(lambda: not a.h.engine.tracker.owns(TP))
        a.h.source.seek(TP, 0)  # assigned back: re-read from the last commit (none)
        a.h.source.notify(Assigned((TP,), {TP: 0}, {}))
        await asyncio.sleep(0.2)
        assert a.transport.started.count("u2@slow.test") == 1  # the copy waits for the original
        gate.set()
        a.h.source.refuse_commits = False  # the broker is back
        await until(lambda: a.h.source.committed.get(TP) == 5)
    finally:
        await a.close()
    assert sorted(a.transport.sent()) == sorted(
        f"u{i}@slow.test" if i == 2 else f"u{i}@fast.test" for i in range(5)
    )
    assert len(a.h.events()) == 5  # one final disposition each, none repeated
