"""The inbound endpoints' producer: `send` returns once the broker acknowledged.

An inbound endpoint answers its client only after what it heard is on Kafka
(an unsubscribe is a promise to the recipient; a 200 for a suppression that
was lost would break it). kafka-python's producer runs its IO on its own
thread; its future is bridged to the caller's event loop, so a slow or absent
broker never blocks the loop that serves requests. `acks=all` and
idempotence: an acknowledged record is on every in-sync replica, and a
retried batch is not written twice.

The client is made in the background and made again after a failure:
kafka-python's constructor waits for a broker (up to 30 s), and an endpoint
started while Kafka is down must answer 503 at once, not crash-loop or hang
its first clients.

The one module of `mailpipe.inbound` that imports the Kafka client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from mailpipe.kafkakit import Cluster, client_options

__all__ = ["AckedProducer", "KafkaError", "ProducerUnavailable"]

LINGER_MS = 2  # a request waits for its record's acknowledgement: batch little
# How long kafka-python may block `send` waiting for metadata of a topic (or for
# buffer space): short, because the caller is a request that is waiting.
MAX_BLOCK_MS = 5_000
CLOSE_TIMEOUT_SECONDS = 10


class ProducerUnavailable(ConnectionError):
    """No Kafka client yet: it is being made, or the last attempt failed (why)."""


class AckedProducer:
    """`await send(...)`: the record is on Kafka, or an exception says why not."""

    def __init__(self, cluster: Cluster, client_id: str) -> None:
        self._cluster, self._client_id = cluster, client_id
        self._producer: KafkaProducer | None = None
        self._making: concurrent.futures.Future[KafkaProducer] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka-client")
        self.last_error = "not connected yet"
        self._make()

    def _new(self) -> KafkaProducer:
        return KafkaProducer(
            **client_options(self._cluster),
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=LINGER_MS,
            max_block_ms=MAX_BLOCK_MS,
        )

    def _make(self) -> None:
        if self._making is None or self._making.done():
            self._making = self._pool.submit(self._new)

    @property
    def ready(self) -> bool:
        return self._client() is not None

    def _client(self) -> KafkaProducer | None:
        if self._producer is None and self._making is not None and self._making.done():
            try:
                self._producer = self._making.result()
            except Exception as exc:  # the client's errors: try again on the next request
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                self._make()
        return self._producer

    async def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        producer = self._client()
        if producer is None:
            raise ProducerUnavailable(f"no Kafka client: {self.last_error}")
        loop = asyncio.get_running_loop()
        # `send` may block up to MAX_BLOCK_MS for metadata: off the loop.
        future = await asyncio.to_thread(producer.send, topic, key=key, value=value)
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
        self._pool.shutdown(wait=False, cancel_futures=True)  # a connect attempt may hang 30 s
        producer = self._client()
        if producer is not None:
            producer.close(timeout=CLOSE_TIMEOUT_SECONDS)
