"""The inbound endpoints' producer: `produce` and `send` return once the broker
acknowledged. Used by the feedback receiver and the one-click unsubscribe
endpoint; with `submission_kafka` (transactional), the only modules of
`mailpipe.inbound` that import kafka-python (the boundary `.importlinter` names).

An inbound endpoint answers its client only after what it heard is on Kafka:
a report is answered 250 only once everything it caused (events,
suppressions, or its DLQ copy) is acknowledged, else 451 and the sending MTA
tries again later; an unsubscribe is a promise to the recipient, and a 200
for a suppression that was lost would break it. `acks=all` and idempotence:
an acknowledged record is on every in-sync replica, and a retried batch is
not written twice.

kafka-python's producer runs its IO on its own thread; `send` may block
waiting for a topic's metadata (up to `max_block_ms`), so it is called on a
worker thread, and each record's future is bridged to the caller's event
loop: a slow or absent broker never blocks the loop that serves clients. How
long to wait for the acknowledgement is the caller's (`asyncio.timeout`).

The client is made in the background and made again after a failure:
kafka-python's constructor waits for a broker (up to 30 s), and the
unsubscribe endpoint started while Kafka is down must answer 503 at once,
not crash-loop or hang its first clients. The feedback receiver waits for
the first client (`started`) and does not start without one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from mailpipe.kafkakit import Cluster, client_options

__all__ = ["AckedProducer", "Item", "KafkaError", "ProducerUnavailable"]

LINGER_MS = 2  # a client waits for its record's acknowledgement: batch little
# How long kafka-python may block `send` waiting for metadata of a topic (or for
# buffer space): short, because the caller is a client that is waiting.
MAX_BLOCK_MS = 5_000
CLOSE_TIMEOUT_SECONDS = 10

Item = tuple[str, bytes | None, bytes | None]  # topic, key, value (None: a tombstone)


class ProducerUnavailable(ConnectionError):
    """No Kafka client yet: it is being made, or the last attempt failed (why)."""


class AckedProducer:
    """`await produce(items)` / `await send(...)`: on Kafka, or an exception says why not."""

    def __init__(
        self, cluster: Cluster, client_id: str, *, max_block_ms: int = MAX_BLOCK_MS
    ) -> None:
        self._cluster, self._client_id, self._max_block_ms = cluster, client_id, max_block_ms
        self._producer: KafkaProducer | None = None
        self._making: concurrent.futures.Future[KafkaProducer] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka-client")
        self.last_error = "not connected yet"
        self._closed = False
        self._make()

    def _new(self) -> KafkaProducer:
        return KafkaProducer(
            **client_options(self._cluster),
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=LINGER_MS,
            max_block_ms=self._max_block_ms,
        )

    def _make(self) -> None:
        if self._closed:
            return  # (the pool is shut down: a new attempt would raise RuntimeError)
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

    async def started(self) -> None:
        """Wait for the first client; raise what made it fail (for a process that
        must not start without Kafka)."""
        making = self._making
        if self._producer is None and making is not None:
            await asyncio.wrap_future(making)
        self._client()

    async def produce(self, items: Sequence[Item]) -> None:
        """Produce `items` in order; returns when all are acknowledged, else raises
        (ProducerUnavailable, or the client's KafkaError)."""
        if not items:
            return
        producer = self._client()
        if producer is None:
            raise ProducerUnavailable(f"no Kafka client: {self.last_error}")
        loop = asyncio.get_running_loop()

        def send_all() -> list[Any]:
            return [producer.send(t, key=k, value=v) for t, k, v in items]

        # `send` may block up to max_block_ms for metadata: off the loop.
        futures = await asyncio.to_thread(send_all)
        # Every future settled before raising: none is left failing unobserved.
        results = await asyncio.gather(
            *(_acknowledged(loop, future) for future in futures), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        await self.produce([(topic, key, value)])

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)  # a connect attempt may hang 30 s
        producer = self._client()
        if producer is not None:
            producer.close(timeout=CLOSE_TIMEOUT_SECONDS)


def _acknowledged(loop: asyncio.AbstractEventLoop, future: Any) -> asyncio.Future[None]:
    """kafka-python's record future (resolved on its IO thread) as an asyncio future."""
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
    return done
