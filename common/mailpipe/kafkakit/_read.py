"""Reading topics without a consumer group: to their end now, or their end offsets.

For replays and checks (the operator's fan-out checkpoint scan, the
suppression list, tests and benchmarks counting events): no group is joined
and nothing is committed, so these never disturb the relays' group.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaTimeoutError

from ._autocreate import without_auto_create
from ._security import Cluster, client_options

READ_POLL_MS = 500  # one fetch round; the loop ends on positions, not on an empty poll
# A committed read waits until every transaction open at its start is decided;
# the broker aborts one left open longer than its producer's transaction
# timeout (60 s for mailpipe's producers), so this is that with a margin.
COMMITTED_READ_SECONDS = 120.0

Record = tuple[bytes | None, bytes | None]  # (key, value); None value = tombstone


def _consumer(bootstrap: Cluster, isolation_level: str = "read_uncommitted") -> KafkaConsumer:
    """A short-lived reader: asking for a topic that is gone must not create it."""
    return without_auto_create(
        KafkaConsumer(
            **client_options(bootstrap),
            enable_auto_commit=False,
            isolation_level=isolation_level,
        )
    )


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
    bootstrap: Cluster,
    topic: str,
    since: dict[int, int] | None = None,
    committed: bool = False,
) -> list[TopicRecord]:
    """Every record on `topic` up to its end now, from the beginning or from
    `since` (partition -> offset); in offset order within each partition.

    `committed`: as the relays read it (`read_committed`): no record of an
    aborted or still open transaction. It reads to the end of the log as it is
    now (the high watermark), not to the last stable offset, so it waits until
    every transaction open now is committed or aborted (KafkaTimeoutError after
    COMMITTED_READ_SECONDS): what a transaction committed after another one
    that is still open is found too."""
    consumer = _consumer(bootstrap, "read_committed" if committed else "read_uncommitted")
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        for tp in tps:
            if since is not None and tp.partition in since:
                consumer.seek(tp, since[tp.partition])
        # a read_committed consumer's end offsets are the last stable ones
        end = _end(bootstrap, tps) if committed else consumer.end_offsets(tps)
        deadline = time.monotonic() + COMMITTED_READ_SECONDS
        out: list[TopicRecord] = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if committed and time.monotonic() > deadline:
                raise KafkaTimeoutError(
                    f"{topic}: a transaction stayed open for {COMMITTED_READ_SECONDS:.0f} s"
                )
            for tp, records in consumer.poll(timeout_ms=READ_POLL_MS).items():
                out.extend(
                    TopicRecord(tp.partition, r.offset, r.key, r.value, tuple(r.headers or ()))
                    for r in records
                )
        return out
    finally:
        consumer.close()


def _end(bootstrap: Cluster, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The high watermarks of `tps`, from a read_uncommitted client."""
    consumer = _consumer(bootstrap)
    try:
        return dict(consumer.end_offsets(tps))
    finally:
        consumer.close()


def read_topic(
    bootstrap: Cluster, topic: str, since: dict[int, int] | None = None, committed: bool = False
) -> list[Record]:
    """`read_records`, keys and values only."""
    return [(r.key, r.value) for r in read_records(bootstrap, topic, since, committed)]
