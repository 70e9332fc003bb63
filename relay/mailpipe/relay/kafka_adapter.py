"""The Kafka adapter: the only module of the relay that imports kafka-python.

kafka-python is blocking and not thread-safe, so each client lives in a thread
of its own and talks to the asyncio engine through queues:

- `KafkaSource`: the consumer-group member. Its thread polls while the
  hand-off buffer has room (pausing every partition when it has none, which
  keeps the group membership alive), executes commits, pauses and resumes
  sent from the loop, and on a rebalance commits what is finished of the
  revoked partitions before telling the engine to drop their queued work.
- `KafkaSink`: a producer with acks=all and idempotence; `send` resolves when
  the broker acknowledged, bridged to asyncio from the producer's callbacks.
- `TopicFollower`: reads a whole topic from the beginning without a group and
  keeps following it (suppressions, events for the warm-up ledger); `caught_up`
  is set once it reached the end that existed when it started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTP
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from mailpipe.contracts.config import KafkaSettings

from .ports import SourceRecord, TopicPartition

log = logging.getLogger("mailpipe.relay.kafka")

POLL_TIMEOUT_MS = 100  # how often the consumer thread looks at its command queue
FULL_WAIT_SECONDS = 0.02  # hand-off full: look again this soon
FULL_POLL_SECONDS = 1.0  # hand-off full: still poll (one record) this often
LAG_INTERVAL_SECONDS = 5.0
FOLLOW_FETCH_MIN_BYTES = 256 * 1024
FOLLOW_FETCH_MAX_WAIT_MS = 500
PARTITION_MEMO_SIZE = 10_000
PARTITION_MEMO_SECONDS = 60.0
COMMIT_TIMEOUT_SECONDS = 30.0  # a commit round trip is milliseconds; this is for a dead thread


def ensure_topics(
    settings: KafkaSettings, partitions: int = 4, replication: int = 1, timeout_s: float = 30
) -> None:
    """Create the pool's topics if missing (idempotent); suppressions are compacted."""
    wanted = [settings.outbound_topic, settings.events_topic, settings.dlq_topic]
    wanted += list(settings.delay_topics.values())
    admin = KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, client_id="mailpipe-admin"
    )
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(t, partitions, replication) for t in wanted if t not in existing]
        for compacted in (settings.suppressions_topic, settings.control_topic):
            if compacted not in existing:
                new.append(
                    NewTopic(
                        compacted,
                        partitions,
                        replication,
                        topic_configs={"cleanup.policy": "compact"},
                    )
                )
        for topic in new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([topic], timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()


@dataclass(frozen=True)
class _Revoked:
    partitions: list[TopicPartition]


def partition_count(bootstrap: str, topic: str) -> int:
    """Partitions of `topic` (0 if unknown), from a short-lived client."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def read_topic(
    bootstrap: str, topic: str, since: dict[int, int] | None = None
) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) on `topic` up to its end now, from the beginning or from
    `since` (partition -> offset). No group, no commits: for replays and checks."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [KafkaTP(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        for tp in tps:
            if since is not None and tp.partition in since:
                consumer.seek(tp, since[tp.partition])
        end = consumer.end_offsets(tps)
        out: list[tuple[bytes | None, bytes | None]] = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=500).values():
                out.extend((r.key, r.value) for r in records)
        return out
    finally:
        consumer.close()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.source._revoked([TopicPartition(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_lost(self, lost: Any) -> None:
        self.source._lost([TopicPartition(tp.topic, tp.partition) for tp in lost])

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.source._assigned_now({TopicPartition(tp.topic, tp.partition) for tp in assigned})


class KafkaSource:
    """A consumer-group member feeding the engine (implements `ports.RecordSource`)."""

    def __init__(
        self,
        settings: KafkaSettings,
        topics: Sequence[str],
        *,
        committable: Callable[[], dict[TopicPartition, int]],
        on_revoked: Callable[[list[TopicPartition]], None],
        on_lag: Callable[[TopicPartition, int], None] | None = None,
        on_assigned: Callable[[set[TopicPartition]], None] | None = None,
        buffer_records: int = 1000,
    ) -> None:
        self._on_assigned = on_assigned
        self.settings = settings
        self.topics = list(topics)
        self._committable = committable
        self._on_revoked = on_revoked
        self._on_lag = on_lag
        self._buffer_limit = buffer_records
        self._commands: queue.SimpleQueue[
            tuple[str, Any, concurrent.futures.Future[None] | None]
        ] = queue.SimpleQueue()
        # Batches of records, and revocations in their place between them: the
        # engine must forget a revoked assignment before it sees any record of
        # the next one, or it would drop that record or mis-finish an offset.
        self._handoff: queue.SimpleQueue[list[SourceRecord] | _Revoked] = queue.SimpleQueue()
        self._buffered = 0
        self._lock = threading.Lock()
        self._pending: deque[SourceRecord] = deque()
        self._assigned: set[TopicPartition] = set()
        self._assignment_changed = False
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._consumer: KafkaConsumer | None = None  # created by the consumer thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="kafka-consumer", daemon=True)
        self.joined = threading.Event()

    # -- loop side -------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    async def poll(self, max_records: int) -> Sequence[SourceRecord]:
        """Up to `max_records` records; with 0, only hand-off control (revocations).

        The hand-off queue is drained in order every time, whatever the engine's
        room: a revocation must reach the engine at once, and the records read
        before it for the partitions it names are dropped here, unhanded (they
        belong to the new owner, who re-reads them from the committed offset).
        """
        if self._error is not None:
            raise RuntimeError("Kafka consumer thread died") from self._error
        dropped = 0
        while True:
            try:
                item = self._handoff.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Revoked):
                gone = set(item.partitions)
                kept = deque(r for r in self._pending if r.tp not in gone)
                dropped += len(self._pending) - len(kept)
                self._pending = kept
                self._on_revoked(item.partitions)
            else:
                self._pending.extend(item)
        out: list[SourceRecord] = []
        while self._pending and len(out) < max_records:
            out.append(self._pending.popleft())
        if dropped or out:
            with self._lock:
                # count what left the buffer, dropped records too: a leak here
                # would eventually pause every partition for good
                self._buffered -= dropped + len(out)
        if not out and max_records > 0:
            await asyncio.sleep(0.01)
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self._error is not None or not self._thread.is_alive():
            raise RuntimeError("Kafka consumer thread is not running") from self._error
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._commands.put(("commit", dict(offsets), fut))
        # bounded: a consumer thread that died meanwhile must not hang shutdown
        await asyncio.wait_for(asyncio.wrap_future(fut), timeout=COMMIT_TIMEOUT_SECONDS)

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self._commands.put(("pause", list(partitions), None))

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self._commands.put(("resume", list(partitions), None))

    def assignment(self) -> set[TopicPartition]:
        with self._lock:
            return set(self._assigned)

    def describe(self) -> dict[str, Any]:
        """Hand-off state, for `kill -USR1` (see relay.main)."""
        with self._lock:
            out: dict[str, Any] = {
                "assigned": sorted(f"{t}/{p}" for t, p in self._assigned),
                "buffered": self._buffered,
                "buffer_limit": self._buffer_limit,
            }
        out["pending"] = len(self._pending)
        consumer = self._consumer
        if consumer is not None:
            with contextlib.suppress(Exception):  # kafka-python internals, best effort
                out["partitions"] = {
                    f"{tp.topic}/{tp.partition}": {
                        "position": getattr(state._position, "offset", None),
                        "paused": state.paused,
                        "fetchable": state.is_fetchable(),
                    }
                    for tp, state in consumer._subscription.assignment.items()
                }
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    # -- consumer thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.settings.bootstrap_servers,
                group_id=self.settings.group_id,
                client_id=self.settings.client_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=500,
                # generous: the engine may hold a batch while domains are throttled
                max_poll_interval_ms=300_000,
                session_timeout_ms=10_000,
                heartbeat_interval_ms=3_000,
            )
        except BaseException as exc:
            self._error = exc
            return
        self._consumer = consumer
        consumer.subscribe(self.topics, listener=_Listener(self))
        last_lag = 0.0
        last_poll = 0.0
        try:
            while not self._stop.is_set():
                self._run_commands(consumer)
                with self._lock:
                    full = self._buffered >= self._buffer_limit
                # Back-pressure without pause(): kafka-python 3.0 can stop
                # fetching a partition for good when pause/resume cycles meet
                # a rebalance (the churn soak test caught it). A full buffer
                # skips the poll instead; a one-record poll every second keeps
                # rebalances and the poll interval moving.
                if full and time.monotonic() - last_poll < FULL_POLL_SECONDS:
                    time.sleep(FULL_WAIT_SECONDS)
                    continue
                last_poll = time.monotonic()
                polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=1 if full else None)
                self._report_assignment(consumer)
                batch = [
                    SourceRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                    for records in polled.values()
                    for r in records
                ]
                if batch:
                    with self._lock:
                        self._buffered += len(batch)
                    self._handoff.put(batch)
                if self._on_lag is not None and time.monotonic() - last_lag > LAG_INTERVAL_SECONDS:
                    last_lag = time.monotonic()
                    self._report_lag(consumer)
            self._run_commands(consumer)
            self._commit(consumer, self._committable())
        except BaseException as exc:
            self._error = exc
            log.exception("Kafka consumer thread failed")
        finally:
            with contextlib.suppress(Exception):
                consumer.close(autocommit=False)

    def _run_commands(self, consumer: KafkaConsumer) -> None:
        while True:
            try:
                kind, arg, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                if kind == "commit":
                    self._commit(consumer, arg)
                elif kind == "pause":
                    consumer.pause(*[KafkaTP(*tp) for tp in arg])
                elif kind == "resume":
                    consumer.resume(*[KafkaTP(*tp) for tp in arg])
                if fut is not None and fut.set_running_or_notify_cancel():
                    fut.set_result(None)
            except Exception as exc:
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
                else:
                    log.warning("consumer command %s failed: %s", kind, exc)

    def _commit(self, consumer: KafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        with self._lock:
            owned = {tp: o for tp, o in offsets.items() if tp in self._assigned}
        if owned:
            consumer.commit({KafkaTP(*tp): OffsetAndMetadata(o, "", -1) for tp, o in owned.items()})

    def _revoked(self, tps: list[TopicPartition]) -> None:
        # kafka-python's IO thread, which must not block: no commit here.
        # With the eager protocol this is only a notice that a rebalance
        # starts: partitions assigned again keep their fetch position (and
        # so must keep the engine's state), so what is really gone is
        # decided when the new assignment arrives (`_assigned_now`).
        pass

    def _lost(self, tps: list[TopicPartition]) -> None:
        # Evicted from the group (session expired): these partitions are gone
        # and their positions reset; the next assignment starts from commits.
        with self._lock:
            self._assigned.difference_update(tps)
        self._handoff.put(_Revoked(list(tps)))

    def _assigned_now(self, tps: set[TopicPartition]) -> None:
        # IO thread too: only note it; `_run` reports it after the poll returns.
        # Partitions of the previous assignment not in this one went to another
        # member: the engine drops their queued work, uncommitted, and what
        # was finished but not committed is re-read by the new owner (a
        # duplicate window bounded by max_in_flight_records). Those kept
        # continue where they were (kafka-python keeps their positions).
        with self._lock:
            gone = self._assigned - tps
            self._assigned = set(tps)
            self._assignment_changed = True
        if gone:
            self._handoff.put(_Revoked(sorted(gone)))
        self.joined.set()

    def _report_assignment(self, consumer: KafkaConsumer) -> None:
        with self._lock:
            if not self._assignment_changed:
                return
            self._assignment_changed = False
            assigned = set(self._assigned)
        # No metadata calls here: they can block this thread past the session
        # timeout and get the member evicted from the group.
        if self._on_assigned is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_assigned, assigned)

    def _report_lag(self, consumer: KafkaConsumer) -> None:
        assert self._on_lag is not None
        for tp in self.assignment():
            ktp = KafkaTP(*tp)
            high = consumer.highwater(ktp)
            if high is None:
                continue
            with contextlib.suppress(Exception):
                self._on_lag(tp, max(0, high - consumer.position(ktp)))


class KafkaSink:
    """Producer whose `send` completes on the broker's acknowledgement (ports.RecordSink)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=f"{settings.client_id}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,  # small batches: acks stay fast, throughput stays high
            retries=5,
        )
        self._partitions: dict[tuple[str, bytes], int] = {}
        self._partitions_until = 0.0
        self._acks: list[tuple[asyncio.Future[None], BaseException | None]] = []
        self._acks_lock = threading.Lock()
        self._acks_scheduled = False

    def prefetch(self, topics: Sequence[str]) -> None:
        """Load topic metadata now: a first send would otherwise block the loop."""
        for topic in topics:
            self._producer.partitions_for(topic)

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> asyncio.Future[None]:
        """Start producing; the future completes on the broker's acknowledgement.

        Acknowledgements arrive on the producer's IO thread; they are queued
        and handed to the event loop in batches (one wake-up per batch rather
        than one per record: at thousands of records a second that matters).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        partition = self._partition_for(topic, key) if key is not None else None
        future = self._producer.send(topic, key=key, value=value, partition=partition)
        future.add_both(self._acked, loop, done)
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

    def _acked(
        self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None], result: Any
    ) -> None:
        error = result if isinstance(result, BaseException) else None
        with self._acks_lock:
            self._acks.append((done, error))
            wake = not self._acks_scheduled
            self._acks_scheduled = True
        if wake:
            loop.call_soon_threadsafe(self._deliver_acks)

    def _deliver_acks(self) -> None:
        with self._acks_lock:
            acks, self._acks = self._acks, []
            self._acks_scheduled = False
        for done, error in acks:
            _set(done, error)

    async def flush(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._producer.flush)

    def close(self) -> None:
        self._producer.close(timeout=10)


def _set(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


class TopicFollower:
    """Reads `topic` from the beginning, without a group, and keeps following it.

    `apply(key, value, caught_up)` runs on the event loop for every record;
    `caught_up` is False while replaying history, True afterwards.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        apply: Callable[[bytes | None, bytes | None, bool], None],
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.apply = apply
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=f"follow-{topic}", daemon=True)
        self.error: BaseException | None = None

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

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _apply_all(self, batch: list[tuple[bytes | None, bytes | None]], live: bool) -> None:
        for key, value in batch:
            self.apply(key, value, live)

    def _run(self) -> None:
        assert self._loop is not None
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                enable_auto_commit=False,
                group_id=None,
                # Followed topics (suppressions, events, campaign states) tolerate
                # half a second of delay; fewer, larger fetches cost less CPU
                # than chasing the events topic record by record at full rate.
                fetch_min_bytes=FOLLOW_FETCH_MIN_BYTES,
                fetch_max_wait_ms=FOLLOW_FETCH_MAX_WAIT_MS,
            )
            parts = None
            deadline = time.monotonic() + 30
            while not parts and time.monotonic() < deadline:
                parts = consumer.partitions_for_topic(self.topic)
                if not parts:
                    time.sleep(0.2)
            if not parts:
                raise RuntimeError(f"topic {self.topic} does not exist")
            tps = [KafkaTP(self.topic, p) for p in parts]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            end = consumer.end_offsets(tps)
            remaining = {tp for tp, o in end.items() if o > 0}
            if not remaining:
                self.caught_up.set()
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
                live = self.caught_up.is_set()
                batch = [(r.key, r.value) for records in polled.values() for r in records]
                if batch:  # one wake-up of the loop per poll, records in order
                    self._loop.call_soon_threadsafe(self._apply_all, batch, live)
                for tp in polled:
                    if tp in remaining and consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
                if not live and not remaining:
                    # everything replayed is queued on the loop before this flag flips
                    self._loop.call_soon_threadsafe(self.caught_up.set)
            consumer.close()
        except BaseException as exc:
            self.error = exc
            self.caught_up.set()
            log.exception("follower of %s failed", self.topic)
