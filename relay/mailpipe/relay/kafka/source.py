"""The relay's consumer-group member: the consumer thread and its commands.

kafka-python's consumer is blocking and not thread-safe, so it lives in one
thread that does everything with it: poll while the hand-off has credit,
follow rebalances (noting what was really revoked), and execute the commands
the event loop sends — commits, pauses, resumes — as typed values through one
FIFO queue, so a commit never overtakes a pause sent before it. The loop side
(`poll`, `commit`, `pause`, `resume`, `assignment`) implements
`ports.RecordSource`; revocations reach the engine in-band, as
`ports.Revoked` items of `poll()` (see `handoff`).

Commits are the engine's: the source never decides on its own what is
finished, and it makes no commit of its own on shutdown. The engine's last
commit, sent before `stop()`, is the one final commit; a commit that cannot
complete (dead thread) fails after COMMIT_TIMEOUT_SECONDS instead of hanging
shutdown.

A failure to read (a batch that cannot be decoded or fails its CRC, a broker
error, even a consumer that cannot be created yet) never ends the thread: it
is reported through `on_error` (relay main: readiness false with the reason,
`mailpipe_consumer_errors_total`), and the thread keeps running commands and
polls again after READ_RETRY_SECONDS. kafka-python leaves the position of a
partition whose batch failed where it was, so nothing is skipped (lost); the
other partitions are read in between.

The consumer joins its group only once the broker's metadata knows every
topic it reads (`_wait_for_topics`). kafka-python's range assignor gives a
member nothing for a topic it has no metadata for, and the member looks again
only at the next metadata refresh: a relay started right after the operator
created the pool's topics sat with "assigned 0 of 4 partitions" for minutes
(CI saw it). Until then the relay reports the missing topics as a read error
(readiness false, with the names). The consumer never creates a topic
(`allow_auto_create_topics=False`): topics belong to the operator, and a relay
reading a deleted pool's topic must not bring it back.

Why one module of ~380 lines: everything that touches the consumer object is
here, because it must run on that one thread; splitting it would spread the
thread's invariants over files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTP
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from mailpipe.contracts.config import KafkaSettings
from mailpipe.kafkakit import client_options

from ..ports import Revoked, SourceRecord, TopicPartition
from .commands import Command, Commit, Pause, Resume
from .handoff import HandOff

log = logging.getLogger("mailpipe.relay.kafka")

POLL_TIMEOUT_MS = 100  # how often the consumer thread looks at its command queue
FULL_WAIT_SECONDS = 0.02  # hand-off full: look again this soon
FULL_POLL_SECONDS = 1.0  # hand-off full: still poll (one record) this often
EMPTY_POLL_SECONDS = 0.01  # nothing to hand over: the engine's poll waits this long
LAG_INTERVAL_SECONDS = 5.0
MAX_POLL_RECORDS = 500
# generous: the engine may hold a batch while domains are throttled
MAX_POLL_INTERVAL_MS = 300_000
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 3_000
COMMIT_TIMEOUT_SECONDS = 30.0  # a commit round trip is milliseconds; this is for a dead thread
STOP_JOIN_SECONDS = 30.0
# After a failed poll or consumer creation: a batch that cannot be read fails
# again at once, so look again this much later, not in a busy loop of errors.
READ_RETRY_SECONDS = 1.0
# How stale the consumer's view of topics and partitions may get: partitions
# the operator adds are picked up (and rebalanced) within this time.
METADATA_MAX_AGE_MS = 30_000


class TopicsMissing(Exception):
    """The broker does not (yet) know topics the relay reads."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python's rebalance callbacks, translated to our TopicPartition."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.source._revoked([TopicPartition(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_lost(self, lost: Any) -> None:
        self.source._lost([TopicPartition(tp.topic, tp.partition) for tp in lost])

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.source._assigned_now({TopicPartition(tp.topic, tp.partition) for tp in assigned})


class KafkaSource:
    """A consumer-group member feeding the engine (implements `ports.RecordSource`).

    `on_lag` and `on_assigned` are for metrics and the warm-up share (relay
    main); nothing calls back into the engine."""

    def __init__(
        self,
        settings: KafkaSettings,
        topics: Sequence[str],
        *,
        on_lag: Callable[[TopicPartition, int], None] | None = None,
        on_assigned: Callable[[set[TopicPartition]], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        buffer_records: int = 1000,
    ) -> None:
        """`on_error` is called on the consumer thread for each failure to read."""
        self.settings = settings
        self.topics = list(topics)
        self._on_lag = on_lag
        self._on_assigned = on_assigned
        self._on_error = on_error
        self.read_errors = 0  # failures to read so far (polls and consumer creation)
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._handoff = HandOff(buffer_records)
        self._lock = threading.Lock()  # guards the assignment, read by both sides
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

    async def poll(self, max_records: int) -> Sequence[SourceRecord | Revoked]:
        """Revocations first, then up to `max_records` records (see `HandOff.take`);
        with 0, only the revocations, without waiting."""
        if self._error is not None:
            raise RuntimeError("Kafka consumer thread died") from self._error
        out = self._handoff.take(max_records)
        # records come after the revocations: no records if the last item is none
        if max_records > 0 and (not out or isinstance(out[-1], Revoked)):
            await asyncio.sleep(EMPTY_POLL_SECONDS)
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self._error is not None or not self._thread.is_alive():
            raise RuntimeError("Kafka consumer thread is not running") from self._error
        command = Commit(dict(offsets))
        self._commands.put(command)
        # bounded: a consumer thread that died meanwhile must not hang shutdown
        await asyncio.wait_for(asyncio.wrap_future(command.done), timeout=COMMIT_TIMEOUT_SECONDS)

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self._commands.put(Pause(tuple(partitions)))

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self._commands.put(Resume(tuple(partitions)))

    def assignment(self) -> set[TopicPartition]:
        with self._lock:
            return set(self._assigned)

    def describe(self) -> dict[str, Any]:
        """Hand-off state, for `kill -USR1` (see relay.main)."""
        out: dict[str, Any] = {
            "assigned": sorted(f"{t}/{p}" for t, p in self.assignment()),
            "buffered": self._handoff.buffered,
            "buffer_limit": self._handoff.limit,
            "pending": self._handoff.pending,
        }
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

    def thread_error(self) -> str | None:
        """Why the consumer thread is not running (for the liveness check), or None."""
        if self._error is not None:
            return f"consumer thread died: {type(self._error).__name__}: {self._error}"
        if (
            self._thread.ident is not None
            and not self._thread.is_alive()
            and not self._stop.is_set()
        ):
            return "consumer thread ended"
        return None

    def stop(self) -> None:
        """Leave the group and close the consumer (commands already sent are run
        first). Blocking: call it from an executor."""
        self._stop.set()
        self._thread.join(timeout=STOP_JOIN_SECONDS)

    # -- consumer thread ---------------------------------------------------------

    def _make_consumer(self) -> KafkaConsumer:
        return KafkaConsumer(
            **client_options(self.settings),
            group_id=self.settings.group_id,
            client_id=self.settings.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS,
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
            allow_auto_create_topics=False,
        )

    def _wait_for_topics(self, consumer: KafkaConsumer) -> bool:
        """Wait until the broker's metadata has every topic (True), or stop (False).

        Joining earlier would get this member no partitions of the missing
        topics until the next metadata refresh (see the module docstring)."""
        while not self._stop.is_set():
            try:
                missing = [t for t in self.topics if not consumer.partitions_for_topic(t)]
            except Exception as exc:  # broker away: same as any failure to read
                self._read_failed(exc, "reading topic metadata")
                continue
            if not missing:
                return True
            self._read_failed(
                TopicsMissing(f"topics not found on the broker: {', '.join(missing)}"),
                "waiting for topics",
            )
        return False

    def _read_failed(self, exc: Exception, what: str) -> None:
        """Report a failure to read and wait before the next try (stop still wins)."""
        self.read_errors += 1
        log.error("Kafka consumer: %s failed (%d so far): %r", what, self.read_errors, exc)
        if self._on_error is not None:
            with contextlib.suppress(Exception):  # a report must never end the thread
                self._on_error(exc)
        self._stop.wait(READ_RETRY_SECONDS)

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        while consumer is None and not self._stop.is_set():
            try:
                consumer = self._make_consumer()
            except Exception as exc:  # no broker yet: the relay waits, it does not exit
                self._read_failed(exc, "creating the consumer")
            except BaseException as exc:
                self._error = exc
                self._fail_commands(exc)
                return
        if consumer is None:
            self._fail_commands(RuntimeError("Kafka consumer thread stopped"))
            return
        self._consumer = consumer
        if not self._wait_for_topics(consumer):
            self._fail_commands(RuntimeError("Kafka consumer thread stopped"))
            with contextlib.suppress(Exception):
                consumer.close(autocommit=False)
            return
        consumer.subscribe(self.topics, listener=_Listener(self))
        last_lag = 0.0
        last_poll = 0.0
        try:
            while not self._stop.is_set():
                self._run_commands(consumer)
                full = self._handoff.full()
                # Back-pressure without pause(): kafka-python 3.0 can stop
                # fetching a partition for good when pause/resume cycles meet
                # a rebalance (the churn soak test caught it). A full buffer
                # skips the poll instead; a one-record poll every second keeps
                # rebalances and the poll interval moving.
                if full and time.monotonic() - last_poll < FULL_POLL_SECONDS:
                    time.sleep(FULL_WAIT_SECONDS)
                    continue
                last_poll = time.monotonic()
                try:
                    polled = consumer.poll(
                        timeout_ms=POLL_TIMEOUT_MS, max_records=1 if full else None
                    )
                except Exception as exc:  # an undecodable batch, a broker error
                    self._read_failed(exc, "reading a batch")
                    continue
                self._report_assignment()
                self._handoff.put_records(
                    [
                        SourceRecord(
                            r.topic,
                            r.partition,
                            r.offset,
                            r.key,
                            r.value,
                            r.timestamp,
                            tuple(r.headers) if r.headers else (),
                        )
                        for records in polled.values()
                        for r in records
                    ]
                )
                if self._on_lag is not None and time.monotonic() - last_lag > LAG_INTERVAL_SECONDS:
                    last_lag = time.monotonic()
                    self._report_lag(consumer)
            self._run_commands(consumer)  # the engine's final commit, sent before stop()
        except BaseException as exc:
            self._error = exc
            log.exception("Kafka consumer thread failed")
        finally:
            self._fail_commands(RuntimeError("Kafka consumer thread stopped"))
            with contextlib.suppress(Exception):
                consumer.close(autocommit=False)

    def _run_commands(self, consumer: KafkaConsumer) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                match command:
                    case Commit(offsets, done):
                        # committed even if the loop stopped waiting (cancelled
                        # or timed out): the offsets are finished all the same
                        self._commit(consumer, offsets)
                        if done.set_running_or_notify_cancel():
                            done.set_result(None)
                    case Pause(partitions):
                        consumer.pause(*[KafkaTP(*tp) for tp in partitions])
                    case Resume(partitions):
                        consumer.resume(*[KafkaTP(*tp) for tp in partitions])
            except Exception as exc:
                if isinstance(command, Commit) and not command.done.done():
                    command.done.set_exception(exc)
                else:
                    log.warning("consumer command %r failed: %s", command, exc)

    def _fail_commands(self, exc: BaseException) -> None:
        """Commits left in the queue when the thread ends fail now, not at their timeout."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, Commit) and command.done.set_running_or_notify_cancel():
                command.done.set_exception(exc)

    def _commit(self, consumer: KafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        with self._lock:
            owned = {tp: o for tp, o in offsets.items() if tp in self._assigned}
        if owned:
            consumer.commit({KafkaTP(*tp): OffsetAndMetadata(o, "", -1) for tp, o in owned.items()})

    # -- rebalance listener (kafka-python's IO thread, inside consumer.poll) -------

    def _revoked(self, tps: list[TopicPartition]) -> None:
        # Must not block: no commit here. With the eager protocol this is only
        # a notice that a rebalance starts: partitions assigned again keep
        # their fetch position (and so must keep the engine's state), so what
        # is really gone is decided when the new assignment arrives.
        pass

    def _lost(self, tps: list[TopicPartition]) -> None:
        # Evicted from the group (session expired): these partitions are gone
        # and their positions reset; the next assignment starts from commits.
        with self._lock:
            self._assigned.difference_update(tps)
        self._handoff.put_revoked(tps)

    def _assigned_now(self, tps: set[TopicPartition]) -> None:
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
            self._handoff.put_revoked(gone)
        self.joined.set()

    # -- reports to relay main (metrics, warm-up share) ------------------------------

    def _report_assignment(self) -> None:
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
