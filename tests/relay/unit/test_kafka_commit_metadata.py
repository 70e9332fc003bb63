"""The Kafka source's side of "finished ahead", without a broker: the consumer
played by a fake (the consumer thread is not started).

- a commit carries each partition's finished-ahead offsets in its metadata;
- a commit while the group rebalances is refused at once (kafka-python would
  retry it for 30 s with the rejoin waiting behind it: the broker fault test
  saw commits stand still for 30 s after the group took the relay back);
- after a rebalance, the engine hears `Assigned` before any record, with the
  committed position and finished-ahead offsets of each partition new to the
  relay, read back from the commit's metadata.
"""

from __future__ import annotations

from typing import Any

import pytest
from kafka import TopicPartition as KafkaTP
from kafka.structs import ConsumerGroupMetadata, MemberState, OffsetAndMetadata

from mailpipe.relay.kafka import metadata
from mailpipe.relay.kafka.source import CommitSkipped
from mailpipe.relay.ports import Assigned, Revoked, SourceRecord

from .test_kafka_handoff import P0, P1, P2, make_source, records


class FakeConsumer:
    def __init__(self, state: str = MemberState.STABLE) -> None:
        self.state = state
        self.commits: list[dict[Any, OffsetAndMetadata]] = []
        self.stored: dict[KafkaTP, OffsetAndMetadata] = {}

    def group_metadata(self) -> ConsumerGroupMetadata:
        return ConsumerGroupMetadata(group_id="g", state=self.state)

    def commit(self, offsets: dict[Any, OffsetAndMetadata], timeout_ms: int) -> None:
        self.commits.append(offsets)
        self.stored.update(offsets)

    def committed(self, tp: KafkaTP, metadata: bool, timeout_ms: int) -> OffsetAndMetadata | None:
        return self.stored.get(tp)


def test_a_commit_carries_the_finished_ahead_offsets_and_the_next_owner_reads_them() -> None:
    old, new = make_source(), make_source()
    consumer = FakeConsumer()
    old._assigned_now({P0, P1})
    meta = {P0: metadata.encode(10, {12, 13, 20})}
    old._commit(consumer, {P0: 10, P1: 4}, meta)  # type: ignore[arg-type]
    assert consumer.commits[-1][KafkaTP(*P0)].metadata == meta[P0]
    assert consumer.commits[-1][KafkaTP(*P1)].metadata == ""

    new._assigned_now({P0, P2})
    new._handoff.put_records(records(P2, 1))  # a poll's records, put after the notice
    new._announce_assignment(consumer)  # type: ignore[arg-type]
    new._handoff.put_records(records(P0, 10))
    items = new._handoff.take(10)
    assert isinstance(items[0], Assigned)
    assert items[0].partitions == (P0, P2)
    assert dict(items[0].committed) == {P0: 10, P2: None}
    assert dict(items[0].finished_ahead) == {P0: frozenset({12, 13, 20}), P2: frozenset()}
    assert [i for i in items if isinstance(i, SourceRecord)] == records(P2, 1) + records(P0, 10)


def test_a_commit_while_the_group_rebalances_is_refused_at_once() -> None:
    source = make_source()
    source._assigned_now({P0})
    consumer = FakeConsumer(MemberState.REBALANCING)
    with pytest.raises(CommitSkipped):
        source._commit(consumer, {P0: 3}, {})  # type: ignore[arg-type]
    assert consumer.commits == []


def test_a_partition_lost_and_assigned_back_is_new_again() -> None:
    """Evicted (positions reset): assigned back, it is announced as new, so the
    engine drops what it knew of the old ownership and learns the commit."""
    source = make_source()
    consumer = FakeConsumer()
    source._assigned_now({P0})
    source._announce_assignment(consumer)  # type: ignore[arg-type]
    source._lost([P0])
    source._assigned_now({P0})
    source._announce_assignment(consumer)  # type: ignore[arg-type]
    items = source._handoff.take(0)
    assert [type(i) for i in items] == [Assigned, Revoked, Assigned]
    assert dict(items[-1].committed) == {P0: None}  # type: ignore[union-attr]
