"""The feedback receiver's producer: the one module of `mailpipe.inbound` that
imports kafka-python (the boundary `.importlinter` names).

A report is answered 250 only after everything it caused (events,
suppressions, or its DLQ copy) is acknowledged by Kafka (acks=all), so a
report is never lost: when Kafka cannot take it, the sending MTA gets a 451
and tries again later. kafka-python blocks (`send` waits for metadata when
the broker is away), so each batch is produced and awaited on a worker
thread, never on the event loop that serves SMTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError

from mailpipe.contracts.config import KafkaSettings
from mailpipe.kafkakit import client_options

# How long one report's records may take to be acknowledged before the sender
# is told to try again (451): well under an MTA's DATA-reply timeout (10 min,
# RFC 5321 4.5.3.2.6), long enough for a leader election.
ACK_TIMEOUT_SECONDS = 30.0
# How long a send may wait for a topic's metadata (kafka-python's max_block_ms).
METADATA_WAIT_MS = 10_000
CLOSE_TIMEOUT_SECONDS = 10

Item = tuple[str, bytes | None, bytes]  # topic, key, value


class ProduceFailed(Exception):
    """Kafka did not acknowledge a report's records in time: answer 451."""


class FeedbackProducer:
    def __init__(self, settings: KafkaSettings) -> None:
        self._producer = KafkaProducer(
            **client_options(settings),
            client_id=f"{settings.client_id}-feedback",
            acks="all",
            enable_idempotence=True,
            max_block_ms=METADATA_WAIT_MS,
            linger_ms=2,
        )

    async def produce(self, items: Sequence[Item]) -> None:
        """Produce `items` in order; returns when all are acknowledged, else
        raises ProduceFailed."""
        if items:
            await asyncio.get_running_loop().run_in_executor(None, self._produce, list(items))

    def _produce(self, items: list[Item]) -> None:
        try:
            futures = [self._producer.send(t, key=k, value=v) for t, k, v in items]
            for future in futures:
                future.get(timeout=ACK_TIMEOUT_SECONDS)
        except KafkaError as exc:
            raise ProduceFailed(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._producer.close(timeout=CLOSE_TIMEOUT_SECONDS)
