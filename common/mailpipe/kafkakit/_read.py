"""Reading topics without a consumer group: to their end now, or their end offsets.

For replays and checks (the operator's fan-out checkpoint scan, the
suppression list, tests and benchmarks counting events): no group is joined
and nothing is committed, so these never disturb the relays' group.
"""

from __future__ import annotations

from typing import NamedTuple

from kafka import KafkaConsumer, TopicPartition

from ._autocreate import without_auto_create
from ._security import Cluster, client_options

READ_POLL_MS = 500  # one fetch round; the loop ends on positions, not on an empty poll

Record = tuple[bytes | None, bytes | None]  # (key, value); None value = tombstone


def _consumer(bootstrap: Cluster) -> KafkaConsumer:
    """A short-lived reader: asking for a topic that is gone must not create it."""
    return without_auto_create(KafkaConsumer(**client_options(bootstrap), enable_auto_commit=False))


def partition_count(bootstrap: Cluster, topic: str) -> int:
    """Partitions of `topic` (0 if it does not exist), from a short-lived client."""
    consumer = _consumer(bootstrap)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def end_offsets(bootstrap: Cluster, topic: str) -> dict[int, int]:
    """partition -> the offset the next record appended to it will get."""
    consumer = _consumer(bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


class TopicRecord(NamedTuple):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def read_records(
    bootstrap: Cluster, topic: str, since: dict[int, int] | None = None
) -> list[TopicRecord]:
    """Every record on `topic` up to its end now, from the beginning or from
    `since` (partition -> offset); in offset order within each partition."""
    consumer = _consumer(bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        for tp in tps:
            if since is not None and tp.partition in since:
                consumer.seek(tp, since[tp.partition])
        end = consumer.end_offsets(tps)
        out: list[TopicRecord] = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for tp, records in consumer.poll(timeout_ms=READ_POLL_MS).items():
                out.extend(
                    TopicRecord(tp.partition, r.offset, r.key, r.value, tuple(r.headers or ()))
                    for r in records
                )
        return out
    finally:
        consumer.close()


def read_topic(bootstrap: Cluster, topic: str, since: dict[int, int] | None = None) -> list[Record]:
    """`read_records`, keys and values only."""
    return [(r.key, r.value) for r in read_records(bootstrap, topic, since)]
