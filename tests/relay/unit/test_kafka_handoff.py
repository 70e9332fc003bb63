"""The Kafka source's hand-off between the consumer thread and the engine,
driven the way kafka-python's rebalance listener drives it (no broker needed:
the consumer thread is not started, its side is played by the test).

The rule under test: with the eager protocol kafka-python announces every
partition as revoked, then keeps the fetch position of those it assigns
again. Only partitions that really went elsewhere may be dropped; dropping a
kept one loses the records already fetched for it (the consumer continues
after them), which a churn soak test caught as missing mail. Revocations
reach the engine in-band, as `Revoked` items of `poll()`, ahead of any record
read after them; the buffer credit of every record leaving the hand-off,
dropped ones too, is given back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence

import pytest

from mailpipe.contracts.config import KafkaSettings
from mailpipe.relay.kafka import KafkaSource
from mailpipe.relay.kafka.commands import Commit, Pause, Resume
from mailpipe.relay.kafka.handoff import HandOff
from mailpipe.relay.ports import Revoked, SourceRecord, TopicPartition

P0 = TopicPartition("p.outbound", 0)
P1 = TopicPartition("p.outbound", 1)
P2 = TopicPartition("p.outbound", 2)


def make_source() -> KafkaSource:
    settings = KafkaSettings.model_validate(
        {
            "bootstrap_servers": "unused:9092",
            "group_id": "g",
            "outbound_topic": "p.outbound",
            "events_topic": "p.events",
            "dlq_topic": "p.dlq",
            "suppressions_topic": "p.suppressions",
            "control_topic": "p.campaigns",
        }
    )
    return KafkaSource(settings, ["p.outbound"], buffer_records=100)


def records(tp: TopicPartition, *offsets: int) -> list[SourceRecord]:
    return [SourceRecord(tp.topic, tp.partition, o, None, b"{}", 0) for o in offsets]


def fetched(source: KafkaSource, tp: TopicPartition, *offsets: int) -> None:
    """What the consumer thread does with a poll's records."""
    source._handoff.put_records(records(tp, *offsets))


def revoked(items: Sequence[SourceRecord | Revoked]) -> list[list[TopicPartition]]:
    return [list(i.partitions) for i in items if isinstance(i, Revoked)]


def offsets(items: Sequence[SourceRecord | Revoked]) -> list[tuple[int, int]]:
    return [(i.partition, i.offset) for i in items if isinstance(i, SourceRecord)]


async def test_partitions_assigned_again_keep_their_fetched_records() -> None:
    source = make_source()
    source._assigned_now({P0, P1})
    fetched(source, P0, 10, 11)
    fetched(source, P1, 20, 21)
    # eager rebalance: everything "revoked", then P0 kept and P1 given away
    source._revoked([P0, P1])
    source._assigned_now({P0, P2})
    fetched(source, P2, 5)
    out = await source.poll(100)
    assert offsets(out) == [(0, 10), (0, 11), (2, 5)]
    assert revoked(out) == [[P1]]
    assert out[0] == Revoked((P1,))  # in-band, before any record
    assert source._handoff.buffered == 0  # the dropped records left the buffer count too


async def test_lost_partitions_are_dropped_at_once() -> None:
    source = make_source()
    source._assigned_now({P0})
    fetched(source, P0, 1, 2, 3)
    source._lost([P0])  # evicted: positions reset, the next owner starts from commits
    assert await source.poll(100) == [Revoked((P0,))]
    source._assigned_now({P0})  # back again, re-read from the committed offset
    fetched(source, P0, 1, 2, 3)
    out = await source.poll(100)
    assert [r.offset for r in out if isinstance(r, SourceRecord)] == [1, 2, 3]
    assert revoked(out) == []


async def test_revocations_pass_even_when_the_engine_takes_no_records() -> None:
    source = make_source()
    source._assigned_now({P0, P1})
    fetched(source, P1, 7, 8)
    source._revoked([P0, P1])
    source._assigned_now({P0})
    assert await source.poll(0) == [Revoked((P1,))]  # a full read window still hears of the loss
    assert source._handoff.buffered == 0


def test_a_revocation_never_overtakes_records_read_after_it() -> None:
    """P1 given away then assigned back: the records of the new ownership come
    after the revocation, those of the old one are gone."""
    handoff = HandOff(limit=100)
    handoff.put_records(records(P1, 1, 2) + records(P0, 9))
    handoff.put_revoked([P1])
    handoff.put_records(records(P1, 1, 2))
    out = handoff.take(2)  # fewer than waiting: the rest stays, in order
    assert out == [Revoked((P1,)), *records(P0, 9), *records(P1, 1)]
    assert handoff.take(100) == records(P1, 2)
    assert handoff.buffered == 0


def test_buffer_credit_comes_back_for_taken_and_dropped_records() -> None:
    handoff = HandOff(limit=4)
    handoff.put_records(records(P0, 1, 2))
    handoff.put_records(records(P1, 1, 2))
    assert handoff.full()
    assert handoff.take(0) == []  # nothing taken, nothing given back
    assert handoff.full()
    handoff.put_revoked([P1])
    assert handoff.take(0) == [Revoked((P1,))]
    assert handoff.buffered == 2 and not handoff.full()
    assert handoff.take(1) == records(P0, 1)
    assert handoff.take(5) == records(P0, 2)
    assert handoff.buffered == 0 and handoff.pending == 0


def test_commands_are_typed_values() -> None:
    commit = Commit({P0: 5})
    assert isinstance(commit.done, concurrent.futures.Future)
    assert Pause((P0,)) == Pause((P0,)) != Resume((P0,))


async def test_a_commit_to_a_source_whose_thread_is_not_running_fails_at_once() -> None:
    source = make_source()  # never started: the thread is not alive
    with pytest.raises(RuntimeError, match="not running"):
        await asyncio.wait_for(source.commit({P0: 1}), timeout=1)
