"""A postponed record reaches its due time in a few hops through the delay topics,
whatever the steps: the writes to each delay topic are counted while simulated
time runs, every delay topic feeding back into the engine as Kafka would."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from mailpipe.contracts.wire import decode_record
from mailpipe.relay.clock import ManualClock
from mailpipe.relay.delays import DUE_SLACK_SECONDS, Waiting
from mailpipe.relay.fakes import MemorySink, MemorySource
from mailpipe.relay.ports import Envelope, SourceRecord, TopicPartition, TransactionResult
from mailpipe.relay.work import Work

from .conftest import Harness, make_config, record_bytes

RETRIES = 20
RETRY_SECONDS = 40
TICK_SECONDS = 0.4  # simulated time per step of the simulation; below the due slack


class LoopbackSink(MemorySink):
    """Collects like MemorySink, and puts what goes to a delay topic back on the
    source, stamped with the (simulated) time it was produced."""

    def __init__(self, source: MemorySource, clock: Callable[[], float], delays: set[str]) -> None:
        super().__init__()
        self.source, self.clock, self.delays = source, clock, delays

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        await super().send(topic, key, value, headers)
        if topic in self.delays:
            stamp = int(self.clock() * 1000)
            self.source.append(topic, 0, key, value, tuple(headers), timestamp_ms=stamp)


def simulated(steps: dict[str, str]) -> tuple[Harness, list[float]]:
    """A harness whose delay topics feed back, a 40 s retry schedule, and the
    simulated times of every delivery attempt."""
    config = make_config(
        kafka={
            "bootstrap_servers": "unused:9092",
            "group_id": "g",
            "outbound_topic": "p.outbound",
            "events_topic": "p.events",
            "dlq_topic": "p.dlq",
            "delay_topics": steps,
        },
        retry={"schedule_seconds": [RETRY_SECONDS], "max_age_seconds": 86400},
    )
    h = Harness(config)
    sink = LoopbackSink(h.source, h.clock.time, set(steps.values()))
    h.sink = sink
    h.engine.postponer.sink = sink
    h.engine.emitter.sink = sink
    attempts: list[float] = []
    deliver = h.transport.deliver

    async def timed(envelope: Envelope) -> TransactionResult:
        attempts.append(h.clock.time())
        return await deliver(envelope)

    h.transport.deliver = timed  # type: ignore[method-assign]
    return h, attempts


def manual(h: Harness) -> ManualClock:
    assert isinstance(h.clock, ManualClock)
    return h.clock


async def run_simulated(h: Harness, done: Callable[[], bool], seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(h.engine.run(stop))
    try:
        elapsed = 0.0
        while not done():
            assert elapsed < seconds, "not done within the simulated time"
            manual(h).advance(TICK_SECONDS)
            elapsed += TICK_SECONDS
            for _ in range(2):  # let the engine read, wake, produce and read back
                await asyncio.sleep(0.001)
    finally:
        stop.set()
        await task


@pytest.mark.parametrize(
    "steps",
    [
        {"1s": "p.delay.1s", "30s": "p.delay.30s", "1m": "p.delay.1m"},
        {"1s": "p.delay.1s", "1m": "p.delay.1m"},
    ],
    ids=["1s-30s-1m", "1s-1m"],
)
async def test_twenty_retries_of_40s_take_a_few_hops_each_and_none_is_early(
    steps: dict[str, str],
) -> None:
    h, attempts = simulated(steps)
    h.transport.answer("later@d.test", *["451 4.3.0 try again"] * RETRIES, "250 2.0.0 OK")
    h.put(record_bytes("later@d.test", created_at=h.clock.time()))

    def delivered() -> bool:
        return any(e["disposition"] == "delivered" for e in h.events())

    await run_simulated(h, delivered, seconds=(RETRIES + 2) * RETRY_SECONDS * 2)

    writes = Counter({t: len(h.sink.topics.get(t, [])) for t in steps.values()})
    print("writes per delay topic:", dict(writes))  # the figure for the report (-s)
    assert sum(writes.values()) <= 2 * RETRIES, writes  # at most two hops a retry
    dispositions = Counter(e["disposition"] for e in h.events())
    assert dispositions == {"deferred": RETRIES, "delivered": 1}  # none lost, none twice
    assert len(attempts) == RETRIES + 1
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert min(gaps) >= RETRY_SECONDS - DUE_SLACK_SECONDS, gaps  # never before it is due
    ids = {json.loads(v or b"")["id"] for t in steps.values() for _, v in h.sink.topics.get(t, [])}
    assert len(ids) == 1  # every hop carries the one record


STEPS = {"1s": "p.delay.1s", "30s": "p.delay.30s", "1m": "p.delay.1m"}
HELD_TP = TopicPartition("p.delay.30s", 0)


async def test_a_held_record_survives_a_restart_and_is_sent_once_when_due() -> None:
    """Held in memory, a record is not committed: a relay stopped mid-wait leaves
    it to the next one, which holds it again until due, and sends it once."""
    h, attempts = simulated(STEPS)
    now = h.clock.time()
    due = now + 10  # its 30 s step is over (it arrived 30 s ago): 10 s left
    h.source.append(
        "p.delay.30s",
        0,
        b"d.test",
        record_bytes("held@d.test", not_before=due),
        timestamp_ms=int((now - 30) * 1000),
    )
    h.put(record_bytes("behind@d.test"), topic="p.delay.30s")  # due now, behind it
    await h.run_until(lambda: h.engine.waiting.held == 1 and len(h.events()) == 1)
    assert [e["recipient"] for e in h.events()] == ["behind@d.test"]  # not held back
    assert HELD_TP not in h.source.paused
    assert h.source.committed.get(HELD_TP, 0) == 0  # the held record is not committed
    assert sum(len(h.sink.topics.get(t, [])) for t in STEPS.values()) == 0

    # The relay stops mid-wait; the next one reads from the committed offset.
    again, attempts = simulated(STEPS)
    manual(again).advance(h.clock.time() - again.clock.time())
    again.source = h.source
    again.engine.source = again.engine.waiting.source = again.engine.window.source = h.source
    h.source.seek(HELD_TP, h.source.committed.get(HELD_TP, 0))  # as after a kill -9

    def sent() -> list[str]:
        return [e["recipient"] for e in again.events() if e["disposition"] == "delivered"]

    await run_simulated(again, lambda: "held@d.test" in sent(), seconds=60)
    envelopes = again.transport.envelopes
    held = [t for t, e in zip(attempts, envelopes, strict=True) if "held@d.test" in e.recipients]
    assert len(held) == 1 and held[0] >= due - DUE_SLACK_SECONDS  # once, not before it was due
    assert sent().count("held@d.test") == 1


async def test_held_records_take_at_most_a_quarter_of_the_window_and_relief_returns_them() -> None:
    h, _ = simulated(STEPS)
    h.engine.reconfigure(
        h.config.model_copy(
            update={"kafka": h.config.kafka.model_copy(update={"max_in_flight_records": 8})}
        )
    )
    now = h.clock.time()
    for i in range(4):  # steps over, 10 s left each
        h.source.append(
            "p.delay.30s",
            0,
            b"d.test",
            record_bytes(f"r{i}@d.test", not_before=now + 10),
            timestamp_ms=int((now - 30) * 1000),
        )
    await h.run_until(lambda: len(h.sink.topics.get("p.delay.1s", [])) == 2)
    assert h.engine.waiting.held == 2  # 8 // 4; the other two went on hopping
    relieved: list[bool] = []

    def relieved_and_returned() -> bool:
        if not relieved:  # what a window stuck full calls (`CommitWindow.full`), while running
            h.engine._relieve()
            relieved.append(True)
        return len(h.sink.topics.get("p.delay.1s", [])) == 4

    await h.run_until(relieved_and_returned)  # held records went back to a delay topic
    assert h.engine.waiting.held == 0
    dues = {json.loads(v or b"")["not_before"] for _, v in h.sink.topics["p.delay.1s"]}
    assert dues == {now + 10}  # each keeps its own due time


def test_a_delay_partition_revoked_while_paused_is_resumed_for_when_it_comes_back() -> None:
    """kafka-python keeps a partition's paused flag when a rebalance assigns it
    again; the records waiting on it are dropped for the new owner, so nothing
    would resume it: a single relay's delay partition was never fetched again."""
    source = MemorySource()
    waiting = Waiting(source)
    tp = TopicPartition("p.delay.30s", 0)
    value = record_bytes("u@d.test")
    waiting.add(
        Work(SourceRecord(tp.topic, tp.partition, 0, b"d.test", value, 0), decode_record(value), 0),
        1e9,
    )
    assert tp in source.paused
    assert waiting.drop([tp]) == 1
    assert tp not in source.paused
