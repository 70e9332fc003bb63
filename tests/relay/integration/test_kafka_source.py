"""KafkaSource against the real broker: records arrive through the hand-off
with its credit given back, typed pause/resume commands reach the consumer
thread, and the source makes exactly the commits the engine asks for — none of
its own on stop (the engine's last commit is the one final commit) — while a
commit after stop fails at once instead of hanging shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTP

from mailpipe.devstack import samples
from mailpipe.kafkakit import ensure_pool_topics
from mailpipe.relay.kafka import KafkaSource
from mailpipe.relay.ports import Assigned, Revoked, Revoking, SourceRecord, TopicPartition

pytestmark = pytest.mark.relay


class CountingSource(KafkaSource):
    """Counts the commits the consumer thread executes."""

    commits_executed = 0

    def _commit(
        self,
        consumer: KafkaConsumer,
        offsets: dict[TopicPartition, int],
        meta: dict[TopicPartition, str],
    ) -> None:
        self.commits_executed += 1
        super()._commit(consumer, offsets, meta)


def produce(bootstrap: str, topic: str, partition: int, values: Sequence[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for v in values:
            producer.send(topic, value=v, partition=partition).get(timeout=30)
    finally:
        producer.close()


async def take(source: KafkaSource, n: int, timeout_s: float = 60) -> list[SourceRecord]:
    out: list[SourceRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} records arrived"
        items = await source.poll(3)  # small takes: the rest waits in the hand-off
        assert not any(isinstance(i, Revoked) for i in items)  # the only member
        out.extend(i for i in items if isinstance(i, SourceRecord))
    return out


CONDITION_SECONDS = 60.0  # a consumer thread's poll round, on a loaded machine
REFUSED_WITHIN_SECONDS = 5.0  # a stopped source refuses at once; its commit bound is longer


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait, without blocking the loop, until `condition` holds (or fail after a deadline)."""
    deadline = time.monotonic() + CONDITION_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _partition(source: KafkaSource, tp: TopicPartition) -> dict[str, Any]:
    """The consumer thread's view of one partition (position, paused), from describe()."""
    partitions: dict[str, dict[str, Any]] = source.describe().get("partitions", {})
    return partitions.get(f"{tp.topic}/{tp.partition}", {})


async def test_records_commands_and_one_commit_per_request(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = samples.pool_topics(kafka_bootstrap, topic_prefix, ()).model_copy(
        update={"control_topic": f"{topic_prefix}.campaigns"}
    )
    ensure_pool_topics(settings, partitions=2)
    topic = settings.outbound_topic
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, produce, kafka_bootstrap, topic, 0, [b"a0", b"a1", b"a2"])
    await loop.run_in_executor(None, produce, kafka_bootstrap, topic, 1, [b"b0", b"b1"])

    source = CountingSource(settings, [topic], buffer_records=4)
    source.start()
    try:
        first = await take(source, 5)
        by_tp = {tp: [r.value for r in first if r.tp == tp] for tp in (p0, p1)}
        assert by_tp == {p0: [b"a0", b"a1", b"a2"], p1: [b"b0", b"b1"]}
        assert source.assignment() == {p0, p1}

        source.pause([p0])
        # the command queue is read every poll round: wait until the consumer has it
        await until(lambda: _partition(source, p0).get("paused") is True, "p0 paused")
        await loop.run_in_executor(None, produce, kafka_bootstrap, topic, 0, [b"a3"])
        await loop.run_in_executor(None, produce, kafka_bootstrap, topic, 1, [b"b2"])
        assert [r.value for r in await take(source, 1)] == [b"b2"]
        # Two fetch rounds since a3 was on the log (b2's, then b3's): a fetchable
        # p0 would have come back with them.
        await loop.run_in_executor(None, produce, kafka_bootstrap, topic, 1, [b"b3"])
        assert [r.value for r in await take(source, 1)] == [b"b3"]
        assert await source.poll(10) == []  # p0 paused: a3 waits
        assert _partition(source, p0)["position"] == 3
        source.resume([p0])
        assert [r.value for r in await take(source, 1)] == [b"a3"]
        assert source.describe()["buffered"] == 0  # every credit came back

        await source.commit({p0: 4, p1: 4})
        assert source.commits_executed == 1
    finally:
        await loop.run_in_executor(None, source.stop)
    assert source.commits_executed == 1  # stop made no commit of its own
    with pytest.raises(RuntimeError, match="not running"):
        # at once: a hang would end in TimeoutError, well before the commit's own bound
        await asyncio.wait_for(source.commit({p0: 4}), timeout=REFUSED_WITHIN_SECONDS)

    group = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=settings.group_id, enable_auto_commit=False
    )
    try:
        committed = {tp: group.committed(KafkaTP(*tp)) for tp in (p0, p1)}
    finally:
        group.close(autocommit=False)
    assert committed == {p0: 4, p1: 4}


async def test_a_rebalance_commits_before_the_rejoin_and_the_next_owner_learns_the_finished(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Two members of one group, the engine played by the test. When the second
    joins, the first hears `Revoking` before it rejoins (kafka-python's async
    rebalance listener), answers with a position and finished-ahead offsets per
    partition, and the source commits them there and then; the member that
    gets a partition hears `Assigned` with that position and those offsets,
    read back from the commit's metadata, before any record of it. Before, no
    commit could be made in a rebalance and the new owner re-sent everything
    past the last one (up to 87 of 800 in the roll fault test)."""
    settings = samples.pool_topics(kafka_bootstrap, topic_prefix, ())
    ensure_pool_topics(settings, partitions=2)
    topic = settings.outbound_topic
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    loop = asyncio.get_running_loop()
    for p in (0, 1):
        values = [f"{p}-{i}".encode() for i in range(10)]
        await loop.run_in_executor(None, produce, kafka_bootstrap, topic, p, values)
    answer = {p0: (3, frozenset({5, 7, 9})), p1: (4, frozenset({6}))}

    def reply(revoking: Revoking) -> None:
        """The engine's answer: a position and finished-ahead offsets per partition."""
        tps = set(revoking.partitions) & set(answer)
        revoking.reply({tp: answer[tp][0] for tp in tps}, {tp: answer[tp][1] for tp in tps})

    first = KafkaSource(settings, [topic])
    second = KafkaSource(settings.model_copy(update={"client_id": "second"}), [topic])
    first.start()
    try:
        assert len(await take(first, 20)) == 20
        second.start()
        revoking = None
        deadline = time.monotonic() + 120  # a loaded machine: joins take their time
        while revoking is None:
            assert time.monotonic() < deadline, "no Revoking before the rejoin"
            revoking = next((i for i in await first.poll(0) if isinstance(i, Revoking)), None)
            await asyncio.sleep(0.05)
        assert set(revoking.partitions) == {p0, p1}
        reply(revoking)
        learned: dict[TopicPartition, tuple[int | None, frozenset[int]]] = {}
        seen: list[SourceRecord] = []

        def ended() -> bool:
            moved = second.assignment()
            return bool(moved) and moved <= set(learned) and moved | first.assignment() == {p0, p1}

        while not ended():
            assert time.monotonic() < deadline, f"rebalance not ended: {learned}"
            for source in (first, second):
                for item in await source.poll(100):
                    if isinstance(item, Revoking):
                        reply(item)  # a group may rebalance twice (the joiner's member id)
                    elif isinstance(item, Assigned):
                        for tp, committed in item.committed.items():
                            learned[tp] = (committed, item.finished_ahead.get(tp, frozenset()))
                    elif isinstance(item, SourceRecord):
                        assert item.tp in learned, "a record came before its partition's Assigned"
                        seen.append(item)
        moved = second.assignment()
        assert {tp: learned[tp] for tp in moved} == {tp: answer[tp] for tp in moved}
        # the new owner reads from the committed position (it skips in the engine)
        for tp in moved:
            position = answer[tp][0]
            while len([r for r in seen if r.tp == tp]) < 10 - position:
                assert time.monotonic() < deadline, "the new owner read nothing"
                seen.extend(i for i in await second.poll(100) if isinstance(i, SourceRecord))
            assert min(r.offset for r in seen if r.tp == tp) == position
    finally:
        await asyncio.gather(
            loop.run_in_executor(None, first.stop), loop.run_in_executor(None, second.stop)
        )
