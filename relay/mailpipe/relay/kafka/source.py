"""The relay's consumer-group member: the consumer thread and its commands.

kafka-python's consumer is blocking and not thread-safe, so it lives in one
thread that does everything with it: poll while the hand-off has credit,
follow rebalances (noting what was really revoked), and execute the commands
the event loop sends — commits, pauses, resumes — as typed values through one
FIFO queue, so a commit never overtakes a pause sent before it. The loop side
(`poll`, `commit`, `pause`, `resume`, `assignment`) implements
`ports.RecordSource`; revocations reach the engine in-band, as
`ports.Revoked` items of `poll()` (see `handoff`).

Rebalances and duplicates (ARCHITECTURE.md, "Nothing sent twice on a hand-over"). kafka-python runs
the rebalance listener on its IO thread; ours is an
`AsyncConsumerRebalanceListener`, so it can wait there without stopping
heartbeats. When a rebalance starts (`on_partitions_revoked`, before the
member rejoins: the group still accepts its commits), it hands the engine a
`ports.Revoking` and waits (REVOKE_REPLY_SECONDS) for the engine's answer,
given once the work running on those partitions finished; it then commits
that answer, finished-ahead offsets in the commit's metadata
(`metadata.encode`), before the rejoin. When the rebalance ended, the
consumer thread reads the committed offset and metadata of every partition
new to this relay and hands the engine an `ports.Assigned` before any of
their records, so records the previous owner finished past its commit are
not sent again.

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

Why one module of ~630 lines: everything that touches the consumer object is
here, because it must run on that one thread (or, for the rebalance
listener, while that thread waits inside `poll`); splitting it would spread
the thread's invariants, and the commit rules of a rebalance, over files.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTP
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import MemberState, OffsetAndMetadata

from mailpipe.contracts.config import KafkaSettings
from mailpipe.kafkakit import client_options

from ..ports import Assigned, Control, Revoking, SourceRecord, TopicPartition
from . import metadata
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
# How long the consumer thread may spend on one commit. kafka-python retries a
# commit until request_timeout_ms (30 s) while the broker is away or the group
# rebalances, and the consumer thread polls (rejoins the group) only after it:
# a stuck commit held a rejoin for 30 s in the broker fault test. The engine
# commits again every COMMIT_INTERVAL_SECONDS anyway, each commit carrying all.
CONSUMER_COMMIT_TIMEOUT_MS = 2_000
# On shutdown, how long the consumer thread keeps the group going to store a
# final commit that a rebalance refused (see `_store_last_commit`).
FINAL_COMMIT_SECONDS = 10.0
STOP_JOIN_SECONDS = 30.0
# After a failed poll or consumer creation: a batch that cannot be read fails
# again at once, so look again this much later, not in a busy loop of errors.
READ_RETRY_SECONDS = 1.0
# How stale the consumer's view of topics and partitions may get: partitions
# the operator adds are picked up (and rebalanced) within this time.
METADATA_MAX_AGE_MS = 30_000
# How long the rebalance listener waits for the engine's answer to `Revoking`:
# longer than the engine lets running work finish (handover.DRAIN_SECONDS),
# far shorter than the rebalance timeout (MAX_POLL_INTERVAL_MS) the rest of
# the group waits at most.
REVOKE_REPLY_SECONDS = 15.0
REVOKE_COMMIT_SECONDS = 10.0  # the commit before the rejoin; a round trip when the broker is up
REVOKE_CHECK_SECONDS = 0.01  # how often the listener looks for the answer (kafka-python's loop)
# Reading the committed offsets and metadata of the partitions a rebalance
# brought, all of them: the consumer thread polls again only after it.
COMMITTED_TIMEOUT_SECONDS = 10.0


def _position(value: Any) -> tuple[int | None, frozenset[int]]:
    """kafka-python's committed OffsetAndMetadata (or None): position and finished-ahead."""
    if value is None or value.offset is None or value.offset < 0:
        return None, frozenset()
    return value.offset, metadata.decode(value.offset, value.metadata)


class TopicsMissing(Exception):
    """The broker does not (yet) know topics the relay reads."""


class CommitSkipped(Exception):
    """A commit not attempted now (the engine's next one carries it)."""


class _Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python's rebalance callbacks, translated to our TopicPartition.

    Async: kafka-python awaits them on its IO loop, which keeps heartbeating
    meanwhile (a blocking listener would stop heartbeats)."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        tps = [TopicPartition(tp.topic, tp.partition) for tp in revoked]
        self.source._revoked(tps)
        await self.source._commit_before_rejoin(tps)

    async def on_partitions_lost(self, lost: Any) -> None:
        self.source._lost([TopicPartition(tp.topic, tp.partition) for tp in lost])

    async def on_partitions_assigned(self, assigned: Any) -> None:
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
        self._rebalanced = False  # an assignment the engine has not been told of (`Assigned`)
        self._fresh: set[TopicPartition] = set()  # partitions new to this relay since then
        # The last commit the engine asked for, if it was not stored (consumer thread only).
        self._unstored: tuple[dict[TopicPartition, int], dict[TopicPartition, str]] | None = None
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

    async def poll(self, max_records: int) -> Sequence[SourceRecord | Control]:
        """Revocations first, then up to `max_records` records (see `HandOff.take`);
        with 0, only the revocations, without waiting."""
        if self._error is not None:
            raise RuntimeError("Kafka consumer thread died") from self._error
        out = self._handoff.take(max_records)
        # records come after the revocations: no records if the last item is none
        if max_records > 0 and (not out or not isinstance(out[-1], SourceRecord)):
            await asyncio.sleep(EMPTY_POLL_SECONDS)
        return out

    async def commit(
        self,
        offsets: dict[TopicPartition, int],
        finished_ahead: Mapping[TopicPartition, Collection[int]] | None = None,
    ) -> None:
        if self._error is not None or not self._thread.is_alive():
            raise RuntimeError("Kafka consumer thread is not running") from self._error
        ahead = finished_ahead or {}
        command = Commit(
            dict(offsets),
            {tp: metadata.encode(o, ahead[tp]) for tp, o in offsets.items() if ahead.get(tp)},
        )
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
            # Private (`_subscription`, `_position`, `is_fetchable`): each
            # partition's fetch state, for diagnostics only. The public
            # `position()` may ask the broker and blocks; `assignment()` and
            # `paused()` say too little. Best effort: an upgrade that removes
            # them loses `partitions` here and nothing else (the guard test
            # names them).
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
            # The submission endpoint writes a message's records (one per
            # domain) in one Kafka transaction: an aborted one is never read.
            isolation_level="read_committed",
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
        last_lag = 0.0
        last_poll = 0.0
        try:
            if not self._wait_for_topics(consumer):
                return  # stopped while waiting; `finally` fails the commands and closes
            consumer.subscribe(self.topics, listener=_Listener(self))
            while not self._stop.is_set():
                self._run_commands(consumer)
                full = self._handoff.full()
                # Back-pressure without pause(): kafka-python 3.0 can stop
                # fetching a partition for good when pause/resume cycles meet
                # a rebalance (the churn soak test caught it). A full buffer
                # skips the poll instead; a one-record poll every second keeps
                # rebalances and the poll interval moving. Not while the group
                # rebalances: kafka-python completes a join only inside poll(),
                # and a join that finished between polls is sent again.
                stable = consumer.group_metadata().state == MemberState.STABLE
                if full and stable and time.monotonic() - last_poll < FULL_POLL_SECONDS:
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
                self._announce_assignment(consumer)  # before any record it brings
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
            self._store_last_commit(consumer)
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
                    case Commit(offsets=offsets, metadata=meta, done=done):
                        # committed even if the loop stopped waiting (cancelled
                        # or timed out): the offsets are finished all the same
                        self._unstored = (offsets, meta)
                        self._commit(consumer, offsets, meta)
                        self._unstored = None
                        if done.set_running_or_notify_cancel():
                            done.set_result(None)
                    case Pause(partitions):
                        consumer.pause(*[KafkaTP(*tp) for tp in partitions])
                    case Resume(partitions):
                        # only those still assigned: a revoked partition's resume
                        # (`delays.Waiting.drop`) has nothing left to resume
                        assigned = consumer.assignment()
                        tps = [KafkaTP(*tp) for tp in partitions]
                        consumer.resume(*[tp for tp in tps if tp in assigned])
            except Exception as exc:
                if isinstance(command, Commit) and not command.done.done():
                    command.done.set_exception(exc)
                else:
                    log.warning("consumer command %r failed: %s", command, exc)

    def _store_last_commit(self, consumer: KafkaConsumer) -> None:
        """Shutdown: the engine's final commit was refused because the group was
        rebalancing (a relay stopped while another joins: a roll). Keep polling,
        handing nothing over, until the rebalance ends, FINAL_COMMIT_SECONDS at
        most: the listener commits it before the rejoin (`_commit_before_rejoin`),
        or it is stored once the group is stable. Without it, the next owner
        re-sends everything the relay finished since its last stored commit."""
        deadline = time.monotonic() + FINAL_COMMIT_SECONDS
        while self._unstored is not None and time.monotonic() < deadline:
            try:
                if consumer.group_metadata().state == MemberState.STABLE:
                    offsets, meta = self._unstored
                    self._commit(consumer, offsets, meta)
                    self._unstored = None
                else:
                    consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=1)  # drives the rejoin
            except Exception as exc:
                log.warning("final commit not stored yet: %r", exc)
                time.sleep(POLL_TIMEOUT_MS / 1000)
        if self._unstored is not None:
            log.warning("final commit not stored: the next owner re-reads past the last one")

    def _fail_commands(self, exc: BaseException) -> None:
        """Commits left in the queue when the thread ends fail now, not at their timeout."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, Commit) and command.done.set_running_or_notify_cancel():
                command.done.set_exception(exc)

    def _commit(
        self,
        consumer: KafkaConsumer,
        offsets: dict[TopicPartition, int],
        meta: dict[TopicPartition, str],
    ) -> None:
        with self._lock:
            owned = {tp: o for tp, o in offsets.items() if tp in self._assigned}
        if not owned:
            return
        if consumer.group_metadata().state != MemberState.STABLE:
            # Rebalancing: kafka-python would retry the commit until its request
            # timeout, with the rejoin waiting behind it; what must be
            # committed before a partition moves is committed by the listener.
            raise CommitSkipped("the group is rebalancing")
        consumer.commit(
            {KafkaTP(*tp): OffsetAndMetadata(o, meta.get(tp, ""), -1) for tp, o in owned.items()},
            timeout_ms=CONSUMER_COMMIT_TIMEOUT_MS,
        )

    def _announce_assignment(self, consumer: KafkaConsumer) -> None:
        """After a rebalance: `Assigned` to the engine, with the committed offset
        and finished-ahead offsets of each partition new to this relay (read
        here, on the consumer thread: blocking calls are not allowed on
        kafka-python's IO thread, where the listener runs)."""
        with self._lock:
            if not self._rebalanced:
                return
            self._rebalanced = False
            assigned = tuple(sorted(self._assigned))
            fresh = sorted(self._fresh & self._assigned)
            self._fresh.clear()
        committed: dict[TopicPartition, int | None] = {}
        ahead: dict[TopicPartition, frozenset[int]] = {}
        deadline = time.monotonic() + COMMITTED_TIMEOUT_SECONDS
        for tp in fresh:
            left_ms = int((deadline - time.monotonic()) * 1000)
            try:
                if left_ms <= 0:
                    raise TimeoutError(f"over {COMMITTED_TIMEOUT_SECONDS:g} s")
                value = consumer.committed(KafkaTP(*tp), metadata=True, timeout_ms=left_ms)
            except Exception as exc:  # unknown: its records are sent, as without metadata
                log.warning("could not read the committed offset of %s/%d: %r", *tp, exc)
                continue
            committed[tp], ahead[tp] = _position(value)
        skipped = sum(len(a) for a in ahead.values())
        if skipped:
            log.info("previous owners finished %d records past their commits", skipped)
        self._handoff.put_control(Assigned(assigned, committed, ahead))

    # -- rebalance listener (kafka-python's IO thread, inside consumer.poll) -------

    def _revoked(self, tps: list[TopicPartition]) -> None:
        # With the eager protocol this is only a notice that a rebalance
        # starts: partitions assigned again keep their fetch position (and so
        # must keep the engine's state), so what is really gone is decided
        # when the new assignment arrives (`_assigned_now`).
        pass

    async def _commit_before_rejoin(self, tps: list[TopicPartition]) -> None:
        """The last commit of these partitions while this member may still make
        it: ask the engine (`Revoking`), wait for its answer, commit it with
        the finished-ahead offsets. On kafka-python's IO loop: waits with its
        sleep, commits with `commit_async` (a blocking call would raise here).
        Never raises: a failure only means the next owner re-reads more."""
        consumer = self._consumer
        if consumer is None or not tps:
            return
        # kafka-python 3.0.12 drives a join only while need_rejoin() holds. A
        # rejoin the leader starts for a metadata change does not set
        # rejoin_needed, and the JoinGroup response makes the snapshots equal
        # again: if the poll's timer ran out meanwhile (this listener waits for
        # the engine), the finished join is never awaited, the member stays
        # "rebalancing" with heartbeats off and is evicted (the config-reload
        # fault test saw it). Flag the rejoin, as a broker-started one is, so
        # polls keep awaiting it until it completes.
        # Private (`_coordinator`): kafka-python has no public call to ask for
        # a rejoin; Java's `KafkaConsumer.enforceRebalance()` (KIP-568) would
        # replace it, as would a kafka-python that keeps awaiting a
        # leader-started join. kafka-python is pinned to the minor tested
        # (pyproject.toml); tests/test_dependency_internals.py names this
        # attribute when an upgrade removes it.
        consumer._coordinator.request_rejoin()
        if self._stop.is_set():
            # Closing: the engine's final commit, sent before stop(), is the last
            # word; store it here if a rebalance refused it.
            unstored = self._unstored
            if unstored is not None:
                offsets, meta = unstored
                await self._commit_now(consumer, offsets, meta, tps)
            return
        answer: concurrent.futures.Future[
            tuple[dict[TopicPartition, int], dict[TopicPartition, frozenset[int]]]
        ] = concurrent.futures.Future()

        def reply(
            offsets: dict[TopicPartition, int], ahead: dict[TopicPartition, frozenset[int]]
        ) -> None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                answer.set_result((offsets, ahead))

        try:
            self._handoff.put_control(Revoking(tuple(sorted(tps)), reply))
            await self._wait_on_io_loop(consumer, answer.done, REVOKE_REPLY_SECONDS, stops=True)
            if not answer.done():
                log.warning("rebalance: no answer from the engine; nothing committed before it")
                return
            offsets, ahead = answer.result()
            meta = {tp: metadata.encode(o, ahead[tp]) for tp, o in offsets.items() if ahead.get(tp)}
            await self._commit_now(consumer, offsets, meta, tps)
        except Exception:
            log.exception("rebalance: committing before rejoining failed")

    async def _commit_now(
        self,
        consumer: KafkaConsumer,
        offsets: dict[TopicPartition, int],
        meta: dict[TopicPartition, str],
        tps: list[TopicPartition],
    ) -> None:
        """Commit from the rebalance listener (kafka-python's IO loop), bounded."""
        commit = {
            KafkaTP(*tp): OffsetAndMetadata(o, meta.get(tp, ""), -1)
            for tp, o in offsets.items()
            if tp in tps
        }
        if not commit:
            return
        future = consumer.commit_async(commit)
        await self._wait_on_io_loop(consumer, lambda: future.is_done, REVOKE_COMMIT_SECONDS)
        if future.is_done and future.succeeded():
            if self._unstored is not None and self._unstored[0] == offsets:
                self._unstored = None
            log.info("rebalance: committed %d partitions before rejoining", len(commit))
        else:
            reason = future.exception if future.is_done else "timed out"
            log.warning("rebalance: the commit before rejoining failed: %s", reason)

    async def _wait_on_io_loop(
        self, consumer: KafkaConsumer, done: Callable[[], bool], seconds: float, stops: bool = False
    ) -> None:
        """Wait with kafka-python's own loop sleep (not asyncio's): its heartbeats
        go on meanwhile. `stops`: a stopping relay waits no more (the engine
        that would answer is gone)."""
        deadline = time.monotonic() + seconds
        # Private (`_net`): an async rebalance listener runs on kafka-python's
        # own selector loop, where `asyncio.sleep` cannot be awaited and
        # `time.sleep` would stop the heartbeats; kafka-python 3.0 has no
        # public awaitable sleep for it. A public one (or awaitable futures
        # with a timeout) would replace this. Guarded and pinned as above.
        while not done() and time.monotonic() < deadline and not (stops and self._stop.is_set()):
            await consumer._net.sleep(REVOKE_CHECK_SECONDS)

    def _lost(self, tps: list[TopicPartition]) -> None:
        # Evicted from the group (session expired): these partitions are gone
        # and their positions reset; the next assignment starts from commits.
        with self._lock:
            self._assigned.difference_update(tps)
            self._fresh.difference_update(tps)
        self._handoff.put_revoked(tps)

    def _assigned_now(self, tps: set[TopicPartition]) -> None:
        # Partitions of the previous assignment not in this one went to another
        # member: the engine drops their queued work, uncommitted; what it
        # finished past the commit went with the commit's metadata. Those kept
        # continue where they were (kafka-python keeps their positions); the
        # new ones are announced after the poll (`_announce_assignment`).
        with self._lock:
            gone = self._assigned - tps
            self._fresh = (self._fresh | (tps - self._assigned)) - gone
            self._assigned = set(tps)
            self._assignment_changed = True
            self._rebalanced = True
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
