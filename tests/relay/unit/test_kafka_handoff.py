"""The Kafka source's hand-off between the consumer thread and the engine,
driven the way kafka-python's rebalance listener drives it (no broker needed:
the consumer thread is not started, its side is played by the test).

The rule under test: with the eager protocol kafka-python announces every
partition as revoked, then keeps the fetch position of those it assigns
again. Only partitions that really went elsewhere may be dropped; dropping a
kept one loses the records already fetched for it (the consumer continues
after them), which a churn soak test caught as missing mail.
"""

from __future__ import annotations

from mailpipe.contracts.config import KafkaSettings
from mailpipe.relay.kafka_adapter import KafkaSource
from mailpipe.relay.ports import SourceRecord, TopicPartition

P0 = TopicPartition("p.outbound", 0)
P1 = TopicPartition("p.outbound", 1)
P2 = TopicPartition("p.outbound", 2)


def make_source() -> tuple[KafkaSource, list[list[TopicPartition]]]:
    revoked: list[list[TopicPartition]] = []
    settings = KafkaSettings.model_validate(
        {
            "bootstrap_servers": "unused:9092",
            "group_id": "g",
            "outbound_topic": "p.outbound",
            "events_topic": "p.events",
            "dlq_topic": "p.dlq",
        }
    )
    source = KafkaSource(
        settings,
        ["p.outbound"],
        committable=dict,
        on_revoked=revoked.append,
        buffer_records=100,
    )
    return source, revoked


def fetched(source: KafkaSource, tp: TopicPartition, *offsets: int) -> None:
    """What the consumer thread does with a poll's records."""
    batch = [SourceRecord(tp.topic, tp.partition, o, None, b"{}", 0) for o in offsets]
    with source._lock:
        source._buffered += len(batch)
    source._handoff.put(batch)


async def test_partitions_assigned_again_keep_their_fetched_records() -> None:
    source, revoked = make_source()
    source._assigned_now({P0, P1})
    fetched(source, P0, 10, 11)
    fetched(source, P1, 20, 21)
    # eager rebalance: everything "revoked", then P0 kept and P1 given away
    source._revoked([P0, P1])
    source._assigned_now({P0, P2})
    fetched(source, P2, 5)
    out = await source.poll(100)
    assert [(r.partition, r.offset) for r in out] == [(0, 10), (0, 11), (2, 5)]
    assert revoked == [[P1]]
    assert source._buffered == 0  # the dropped records left the buffer count too


async def test_lost_partitions_are_dropped_at_once() -> None:
    source, revoked = make_source()
    source._assigned_now({P0})
    fetched(source, P0, 1, 2, 3)
    source._lost([P0])  # evicted: positions reset, the next owner starts from commits
    assert await source.poll(100) == []
    assert revoked == [[P0]]
    source._assigned_now({P0})  # back again, re-read from the committed offset
    fetched(source, P0, 1, 2, 3)
    assert [r.offset for r in await source.poll(100)] == [1, 2, 3]
    assert revoked == [[P0]]


async def test_revocations_pass_even_when_the_engine_takes_no_records() -> None:
    source, revoked = make_source()
    source._assigned_now({P0, P1})
    fetched(source, P1, 7, 8)
    source._revoked([P0, P1])
    source._assigned_now({P0})
    assert await source.poll(0) == []  # a full read window still hears of the loss
    assert revoked == [[P1]]
    assert source._buffered == 0
