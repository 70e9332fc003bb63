"""The operator's Kafka IO: topics, fan-out produce, checkpoint scans, events.

Fan-out is exactly-once across operator restarts without Kafka transactions:
before each chunk the operator checkpoints, in the Campaign's status, the
index it starts at *and the end offsets of the outbound topic at that moment*.
After a crash it scans only the records appended since those offsets, finds
which indices of this campaign were already produced (record ids are
`<campaign uid>-<index>`), and skips them. Nothing before the checkpoint is
re-sent, nothing after it is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable

from kafka import KafkaProducer

from mailpipe.contracts.wire import (
    Event,
    WireError,
    decode_event,
    decode_suppression,
    suppression_key,
)
from mailpipe.kafkakit import TopicFollower, read_topic

# The admin helpers are kafkakit's (one copy for every caller); re-exported
# because the handlers reach them as `kafka_io.ensure_topics` and `kafka_io.end_offsets`.
from mailpipe.kafkakit import delete_topics as delete_topics
from mailpipe.kafkakit import end_offsets as end_offsets
from mailpipe.kafkakit import ensure_topics as ensure_topics
from mailpipe.kafkakit import list_topics as list_topics

log = logging.getLogger("mailpipe.operator.kafka")

# Fan-out is bulk: wait a little to fill big batches, so 100k records take few requests.
FANOUT_LINGER_MS = 20
FANOUT_BATCH_BYTES = 256 * 1024
ACK_TIMEOUT_SECONDS = 30  # a record not acknowledged by then fails the chunk (retried whole)
CLOSE_TIMEOUT_SECONDS = 10  # at shutdown, pending sends get this long before they are dropped

Observer = Callable[[Event], None]


class Producers:
    """One idempotent, acks=all producer per Kafka cluster, shared by fan-outs."""

    def __init__(self) -> None:
        self._producers: dict[str, KafkaProducer] = {}
        self._lock = threading.Lock()

    def get(self, bootstrap: str) -> KafkaProducer:
        with self._lock:
            p = self._producers.get(bootstrap)
            if p is None:
                p = KafkaProducer(
                    bootstrap_servers=bootstrap,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=FANOUT_LINGER_MS,
                    batch_size=FANOUT_BATCH_BYTES,
                    compression_type=None,
                    client_id="mailpipe-operator-fanout",
                )
                self._producers[bootstrap] = p
            return p

    def close(self) -> None:
        with self._lock:
            for p in self._producers.values():
                p.close(timeout=CLOSE_TIMEOUT_SECONDS)
            self._producers.clear()


def produce_all(producer: KafkaProducer, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Send and wait until every record is acknowledged; raise on the first failure."""
    futures = [producer.send(topic, key=k, value=v) for k, v in records]
    producer.flush()
    for f in futures:
        f.get(timeout=ACK_TIMEOUT_SECONDS)


def produced_since(bootstrap: str, topic: str, since: dict[int, int], uid: str) -> set[int]:
    """Indices of campaign `uid` appended to `topic` after the `since` offsets."""
    prefix = f'"id":"{uid}-'.encode()
    return {
        int(json.loads(value)["id"].rsplit("-", 1)[1])
        for _, value in read_topic(bootstrap, topic, since)
        if value and prefix in value
    }


def read_suppressions(bootstrap: str, topic: str) -> set[str]:
    """The whole compacted suppression topic, tombstones applied."""
    out: set[str] = set()
    for key, value in read_topic(bootstrap, topic):
        if key is None:
            continue
        if value is None:
            out.discard(key.decode())
            continue
        with contextlib.suppress(WireError):
            out.add(suppression_key(decode_suppression(value).address))
    return out


class EventsHub:
    """Follows each pool's events topic once and fans the events out to observers.

    `follow` may be called from any thread (kopf daemons run in threads);
    observers always run on the operator's event loop, given to `start`.
    """

    def __init__(self) -> None:
        self._followers: dict[tuple[str, str], TopicFollower] = {}
        self._observers: dict[tuple[str, str], list[Observer]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def follow(self, bootstrap: str, topic: str, observer: Observer) -> None:
        """Call `observer` with every event on `topic`, from its beginning; idempotent."""
        key = (bootstrap, topic)
        with self._lock:
            observers = self._observers.setdefault(key, [])
            if observer not in observers:
                observers.append(observer)
            if key in self._followers:
                return

            def apply(_: bytes | None, value: bytes | None, __: bool) -> None:
                if value is None:
                    return
                try:
                    event = decode_event(value)
                except WireError:
                    return
                for obs in self._observers.get(key, []):
                    obs(event)

            follower = TopicFollower(bootstrap, topic, apply)
            self._followers[key] = follower
        follower.start(self._loop)

    def unfollow(self, bootstrap: str, topic: str) -> None:
        """Stop following `topic` (its pool is being deleted: a consumer still
        asking for the topic's metadata would have the broker re-create it). Blocking."""
        with self._lock:
            follower = self._followers.pop((bootstrap, topic), None)
            self._observers.pop((bootstrap, topic), None)
        if follower is not None:
            follower.stop()

    def stop(self) -> None:
        for f in self._followers.values():
            f.stop()
