"""The inbound endpoints' producer: `send` returns once the broker acknowledged.

An inbound endpoint answers its client only after what it heard is on Kafka
(an unsubscribe is a promise to the recipient; a 200 for a suppression that
was lost would break it). kafka-python's producer runs its IO on its own
thread; its future is bridged to the caller's event loop, so a slow or absent
broker never blocks the loop that serves requests. `acks=all` and
idempotence: an acknowledged record is on every in-sync replica, and a
retried batch is not written twice.

The one module of `mailpipe.inbound` that imports the Kafka client.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from mailpipe.kafkakit import Cluster, client_options

__all__ = ["AckedProducer", "KafkaError"]

LINGER_MS = 2  # a request waits for its record's acknowledgement: batch little
# How long kafka-python may block `send` waiting for metadata of a topic (or for
# buffer space): short, because the caller is a request that is waiting.
MAX_BLOCK_MS = 5_000
CLOSE_TIMEOUT_SECONDS = 10


class AckedProducer:
    """`await send(...)`: the record is on Kafka, or an exception says why not."""

    def __init__(self, cluster: Cluster, client_id: str) -> None:
        self._producer = KafkaProducer(
            **client_options(cluster),
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=LINGER_MS,
            max_block_ms=MAX_BLOCK_MS,
        )

    async def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        loop = asyncio.get_running_loop()
        # `send` may block up to MAX_BLOCK_MS for metadata: off the loop.
        future = await asyncio.to_thread(self._producer.send, topic, key=key, value=value)
        done: asyncio.Future[None] = loop.create_future()

        def settle(result: Any) -> None:
            def apply() -> None:
                if done.done():
                    return
                if isinstance(result, BaseException):
                    done.set_exception(result)
                else:
                    done.set_result(None)

            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(apply)

        future.add_both(settle)
        await done

    def close(self) -> None:
        self._producer.close(timeout=CLOSE_TIMEOUT_SECONDS)
