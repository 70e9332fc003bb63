"""The relay's producer: `send` completes when the broker acknowledged the record.

Its own module because acknowledgement is what "Nothing lost" (ARCHITECTURE.md) hangs on (an offset
is finished only after everything it caused is acknowledged, ARCHITECTURE.md)
and because the bridge from kafka-python's IO thread to asyncio is tuned for
throughput: acknowledgements are batched into one loop wake-up, and the
partition of a key is remembered instead of hashed per record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from mailpipe.contracts.config import KafkaSettings
from mailpipe.kafkakit import client_options

from ..workers import LoopHandOver

LINGER_MS = 5  # small batches: acks stay fast, throughput stays high
SEND_RETRIES = 5
CLOSE_TIMEOUT_SECONDS = 10
PARTITION_MEMO_SIZE = 10_000  # keys (campaigns, domains) remembered at most
PARTITION_MEMO_SECONDS = 60.0  # forgotten this often, to follow partitions added to a topic


class KafkaSink:
    """Producer whose `send` completes on the broker's acknowledgement (ports.RecordSink)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._producer = KafkaProducer(
            **client_options(settings),
            client_id=f"{settings.client_id}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=LINGER_MS,
            retries=SEND_RETRIES,
        )
        self._partitions: dict[tuple[str, bytes], int] = {}
        self._partitions_until = 0.0
        self._acks: LoopHandOver[None] | None = None  # made on the loop by the first send

    def prefetch(self, topics: Sequence[str]) -> None:
        """Load topic metadata now: a first send would otherwise block the loop."""
        for topic in topics:
            self._producer.partitions_for(topic)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> asyncio.Future[None]:
        """Start producing; the future completes on the broker's acknowledgement.

        Acknowledgements arrive on the producer's IO thread; they are queued
        and handed to the event loop in batches (one wake-up per batch rather
        than one per record: at thousands of records a second that matters).
        """
        loop = asyncio.get_running_loop()
        if self._acks is None or self._acks.loop is not loop:
            self._acks = LoopHandOver(loop)
        done: asyncio.Future[None] = loop.create_future()
        partition = self._partition_for(topic, key) if key is not None else None
        future = self._producer.send(
            topic, key=key, value=value, partition=partition, headers=list(headers) or None
        )
        future.add_both(_acked, self._acks, done)
        return done

    def _partition_for(self, topic: str, key: bytes) -> int:
        """The partition kafka-python's default partitioner picks for `key`
        (murmur2 of the key over the sorted partitions), remembered: the hash is
        pure Python and most keys (campaigns, domains) repeat all day. The memo
        is bounded and forgotten every PARTITION_MEMO_SECONDS, so a topic that
        gains partitions is followed about as soon as the client's own metadata."""
        now = time.monotonic()
        if len(self._partitions) > PARTITION_MEMO_SIZE or now > self._partitions_until:
            self._partitions.clear()
            self._partitions_until = now + PARTITION_MEMO_SECONDS
        found = self._partitions.get((topic, key))
        if found is None:
            parts = sorted(self._producer.partitions_for(topic))
            found = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]  # as DefaultPartitioner
            self._partitions[(topic, key)] = found
        return found

    async def flush(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._producer.flush)

    def close(self) -> None:
        self._producer.close(timeout=CLOSE_TIMEOUT_SECONDS)


def _acked(acks: LoopHandOver[None], done: asyncio.Future[None], result: Any) -> None:
    """On the producer's IO thread: the record's acknowledgement (or its error)."""
    acks.resolve(done, None, result if isinstance(result, BaseException) else None)
