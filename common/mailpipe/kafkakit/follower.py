"""Following a whole topic from its beginning, without a group, on a thread.

The relay replays the suppression list, the warm-up ledger (events) and the
campaign states before it joins its group, then keeps them current; the
operator follows each pool's events for status. Both need the same thing: every
record of every partition, in order per partition, applied on the asyncio loop
(kafka-python blocks, so the client lives in a thread of its own), and a flag
that says "everything that existed when I started has been applied".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition

from ._security import Cluster, client_options

log = logging.getLogger("mailpipe.kafka.follower")

POLL_TIMEOUT_MS = 100  # how soon a stop request is noticed
# Followed topics (suppressions, events, campaign states) tolerate half a
# second of delay; fewer, larger fetches cost less CPU than chasing the events
# topic record by record at full rate.
FETCH_MIN_BYTES = 256 * 1024
FETCH_MAX_WAIT_MS = 500
TOPIC_WAIT_SECONDS = 30.0  # a topic created moments ago may take this long to show in metadata
TOPIC_RETRY_SECONDS = 0.2
STOP_JOIN_SECONDS = 10.0

Apply = Callable[[bytes | None, bytes | None, bool], None]


class TopicFollower:
    """Reads `topic` from the beginning, without a group, and keeps following it.

    `apply(key, value, live)` runs on the event loop for every record; `live`
    is False while replaying history, True afterwards. `caught_up` is set once
    everything up to the end offsets seen at start has been queued to the loop
    (and, being set through the loop too, only after it was applied).
    """

    # A record whose `apply` raised is logged and counted (`failed_records`), and
    # the rest of its batch still applied: one bad value must never undo the
    # suppressions behind it (issue 10, finding 2).

    def __init__(
        self,
        bootstrap_servers: Cluster,
        topic: str,
        apply: Apply,
        *,
        isolation_level: str = "read_uncommitted",
    ) -> None:
        """`isolation_level="read_committed"` for a topic written in Kafka
        transactions, whose aborted records must never be applied."""
        self.bootstrap_servers = bootstrap_servers
        self.isolation_level = isolation_level
        self.topic = topic
        self.apply = apply
        self.failed_records = 0
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=f"follow-{topic}", daemon=True)
        self.error: BaseException | None = None
        self._barriers: queue.SimpleQueue[asyncio.Future[None]] = queue.SimpleQueue()

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start following; records are applied on `loop` (default: the running one)."""
        self._loop = loop or asyncio.get_running_loop()
        self._thread.start()

    async def wait_caught_up(self, timeout_s: float = 60) -> None:
        ok = await asyncio.get_running_loop().run_in_executor(None, self.caught_up.wait, timeout_s)
        if self.error is not None:
            raise RuntimeError(f"following {self.topic} failed") from self.error
        if not ok:
            raise TimeoutError(f"could not read {self.topic} to its end within {timeout_s}s")

    async def read_past_now(self, timeout_s: float = 60) -> None:
        """Returns once every record the topic holds now has been applied: what
        another process wrote before this call is known after it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers.put(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError as exc:
            message = f"could not read {self.topic} to its end within {timeout_s}s"
            raise TimeoutError(message) from exc
        if self.error is not None:
            raise RuntimeError(f"following {self.topic} failed") from self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=STOP_JOIN_SECONDS)

    def _passed(
        self, consumer: KafkaConsumer, future: asyncio.Future[None], end: dict[TopicPartition, int]
    ) -> bool:
        if any(consumer.position(tp) < offset for tp, offset in end.items()):
            return False
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, future)
        return True

    def _apply_all(self, batch: list[tuple[bytes | None, bytes | None]], live: bool) -> None:
        for key, value in batch:
            try:
                self.apply(key, value, live)
            except Exception:
                self.failed_records += 1
                log.exception("%s: could not apply the record with key %r", self.topic, key)

    def _run(self) -> None:
        assert self._loop is not None
        consumer: KafkaConsumer | None = None
        try:
            consumer = KafkaConsumer(
                **client_options(self.bootstrap_servers),
                enable_auto_commit=False,
                group_id=None,
                fetch_min_bytes=FETCH_MIN_BYTES,
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                isolation_level=self.isolation_level,
            )
            parts = None
            deadline = time.monotonic() + TOPIC_WAIT_SECONDS
            while not parts and time.monotonic() < deadline:
                parts = consumer.partitions_for_topic(self.topic)
                if not parts:
                    time.sleep(TOPIC_RETRY_SECONDS)
            if not parts:
                raise RuntimeError(f"topic {self.topic} does not exist")
            tps = [TopicPartition(self.topic, p) for p in parts]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            end = consumer.end_offsets(tps)
            remaining = {tp for tp, o in end.items() if o > 0}
            if not remaining:
                self.caught_up.set()
            barriers: list[tuple[asyncio.Future[None], dict[TopicPartition, int]]] = []
            while not self._stop.is_set():
                while not self._barriers.empty():
                    barriers.append((self._barriers.get(), consumer.end_offsets(tps)))
                polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
                live = self.caught_up.is_set()
                batch = [(r.key, r.value) for records in polled.values() for r in records]
                if batch:  # one wake-up of the loop per poll, records in order
                    self._loop.call_soon_threadsafe(self._apply_all, batch, live)
                # After the batch: the loop applies it before it resolves these.
                barriers = [b for b in barriers if not self._passed(consumer, *b)]
                for tp in polled:
                    if tp in remaining and consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
                if not live and not remaining:
                    # everything replayed is queued on the loop before this flag flips
                    self._loop.call_soon_threadsafe(self.caught_up.set)
        except BaseException as exc:
            self.error = exc
            self.caught_up.set()
            while not self._barriers.empty():  # its waiters learn of the error now
                self._loop.call_soon_threadsafe(_resolve, self._barriers.get())
            log.exception("follower of %s failed", self.topic)
        finally:
            if consumer is not None:  # a failed follower must not leak its sockets either
                with contextlib.suppress(Exception):
                    consumer.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
