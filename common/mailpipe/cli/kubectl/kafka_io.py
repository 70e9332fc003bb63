"""The kubectl plugin's Kafka IO: read a topic to its end, produce and wait for the acks.

Reads join no consumer group and commit nothing (`kafkakit.read_records`), so
looking something up never disturbs the relays; writes wait for `acks=all`,
so when the command returns the suppression (or its tombstone) is on Kafka.
Every client logs in as the plugin's user (flags or MAILPIPE_KAFKA_*): the
command passes it in with the bootstrap servers, as one `KafkaConnection`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from kafka import KafkaProducer
from kafka.errors import KafkaError as KafkaError  # re-exported: the plugin reports it

from mailpipe.contracts.kafka_security import KafkaConnection
from mailpipe.contracts.wire import Event, WireError, decode_event
from mailpipe.kafkakit import client_options, read_records

from .records import KafkaRecord

ACK_TIMEOUT_SECONDS = 30  # a broker that has not acknowledged by then fails the command


class KafkaFailure(Exception):
    """A Kafka client error, named with the address the plugin used and what to do."""

    def __init__(self, bootstrap: str, exc: KafkaError) -> None:
        detail = " ".join(str(exc).split())[:200]
        super().__init__(
            f"Kafka at {bootstrap}: {type(exc).__name__}"
            + (f" ({detail})" if detail and detail != type(exc).__name__ else "")
            + ": if that address does not answer from here, give a reachable one with"
            " --bootstrap or MAILPIPE_KAFKA_BOOTSTRAP"
        )


@contextlib.contextmanager
def _mapped(cluster: KafkaConnection) -> Iterator[None]:
    """The Kafka client's errors as `KafkaFailure` (mapped once, here)."""
    try:
        yield
    except KafkaError as exc:
        raise KafkaFailure(cluster.bootstrap_servers, exc) from exc


def read(cluster: KafkaConnection, topic: str) -> list[KafkaRecord]:
    """Every (key, value) on `topic` up to its end now."""
    with _mapped(cluster):
        return [(r.key, r.value) for r in read_records(cluster, topic)]


def events_of(cluster: KafkaConnection, topic: str, address: str) -> list[Event]:
    """The decodable events on `topic` that may concern `address`: the bytes are
    searched first (case-insensitively), so only candidates are decoded."""
    needle = address.strip().lower().encode()
    out = []
    with _mapped(cluster):
        records = read_records(cluster, topic)
    for r in records:
        if r.value is None or needle not in r.value.lower():
            continue
        try:
            out.append(decode_event(r.value))
        except WireError:
            continue  # not an event: the relays count it; a lookup skips it
    return out


def produce(cluster: KafkaConnection, topic: str, records: Iterable[KafkaRecord]) -> int:
    """Produce `records` (None value: a tombstone) and wait for every ack; the count."""
    with _mapped(cluster):
        producer = KafkaProducer(
            **client_options(cluster), acks="all", client_id="kubectl-mailpipe"
        )
        try:
            futures = [producer.send(topic, key=k, value=v) for k, v in records]
            producer.flush(timeout=ACK_TIMEOUT_SECONDS)
            for f in futures:
                f.get(timeout=ACK_TIMEOUT_SECONDS)
            return len(futures)
        finally:
            producer.close(timeout=ACK_TIMEOUT_SECONDS)
