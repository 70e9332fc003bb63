"""One shared reader of every pool's events topic, per Kafka cluster.

The operator counts each pool's events (warm-up ledgers, campaign tallies).
One `TopicFollower` per pool meant one consumer, one thread and its sockets
per pool: with 200 pools, 200 kafka-python clients fought over two cores,
their I/O loops logged thousands of "blocking the event loop" warnings, pools
took minutes to become Ready and the operator ignored SIGTERM for over a
minute (issue 12, point 8). Here one consumer per bootstrap cluster is
assigned the partitions of every followed topic; topics are added and removed
by re-assigning, so the number of Kafka clients does not grow with the pools.

Each subscriber (an observer of one topic) sees every record of its topic
once, from the beginning, in order per partition, on the event loop. A
subscriber added to a topic already being read makes the reader seek that
topic back to its beginning; the others skip what they have seen (each keeps
the next offset it expects per partition). A topic that does not exist yet
(its pool is being reconciled right now) is looked for again every second,
from one metadata request for all such topics. (Over 300 lines: the reader
thread and the dispatch on the loop share the subscription table and its
rewind rule; split in two modules, the rule would live in both.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition

from mailpipe.contracts.site_actions import SiteAction
from mailpipe.contracts.warmup import IPUnpaused, WarmupUsage, decode_events_value
from mailpipe.contracts.wire import Event, WireError
from mailpipe.kafkakit import client_options, without_auto_create

from .kafka_identity import connection

log = logging.getLogger("mailpipe.operator.events")

Observer = Callable[[Event], None]
UnpauseObserver = Callable[[IPUnpaused], None]
SiteActionObserver = Callable[[SiteAction], object]  # what it returns is ignored
ConsumerFactory = Callable[[str], KafkaConsumer]

POLL_TIMEOUT_MS = 200  # how soon a stop request or a new topic is noticed
# Status tolerates half a second of delay; few large fetches over hundreds of
# partitions cost less CPU than chasing each pool's events record by record.
FETCH_MIN_BYTES = 256 * 1024
FETCH_MAX_WAIT_MS = 500
TOPIC_RETRY_SECONDS = 1.0  # a topic not in metadata yet is looked for again at this pace
# Looking for a topic asks for the metadata of every topic of the cluster (kafka-python
# has no lookup by name): with 1,000 pools, 7,000 topics and a 100+ ms decode that
# starves every Kafka client of the process ("blocking the event loop"). Asked on every
# new follow, it ran many times a second while pools were created (a third of the
# operator's CPU, measured with py-spy); now at most this share of the reader's time.
TOPIC_LOOKUP_SHARE = 0.1
TOPIC_MISSING_WARN_SECONDS = 60.0  # longer than any reconcile takes to create the topics
# A pool not reconciled yet has its reconcile say when its events topic exists:
# with 1,000 pools created together, hundreds of them wait for their first
# reconcile at once, and looking their topics up meanwhile (every topic's
# metadata, thousands) was what kept kafka-python's I/O loop blocked. Looked up
# anyway after this long (another operator's reconcile made them, say).
TOPIC_EXPECTED_SECONDS = TOPIC_MISSING_WARN_SECONDS
# Each new assignment makes the consumer refresh the metadata of every assigned
# topic: with 1,000 pools created together, re-assigning for each new events
# topic decoded a 1,000-topic metadata answer a dozen times a second (the
# reader's main cost, and kafka-python's "blocking the event loop"). Changes
# are gathered and assigned together at most this often; a deleted pool's
# topic is let go within it (`unsubscribe_all` waits for that).
ASSIGN_PAUSE_SECONDS = 1.0
CLIENT_RETRY_SECONDS = 5.0  # an unreachable cluster is tried again at this pace
STOP_JOIN_SECONDS = 5.0  # one poll timeout plus closing the client


def default_consumer(bootstrap: str) -> KafkaConsumer:
    # A reader must never re-create the topic of a pool being deleted.
    return without_auto_create(
        KafkaConsumer(
            **client_options(connection(bootstrap)),  # the operator's login
            group_id=None,
            enable_auto_commit=False,
            fetch_min_bytes=FETCH_MIN_BYTES,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            client_id="mailpipe-operator-events",
        )
    )


def lookup_pause(took_seconds: float) -> float:
    """Seconds until missing topics are looked for again, after a lookup that took
    `took_seconds`: `TOPIC_RETRY_SECONDS`, or longer when lookups are slow, so
    they take at most `TOPIC_LOOKUP_SHARE` of the reader's time."""
    return max(TOPIC_RETRY_SECONDS, took_seconds / TOPIC_LOOKUP_SHARE)


@dataclass(eq=False)
class _Subscriber:
    on_event: Observer
    on_unpause: UnpauseObserver | None
    on_site_action: SiteActionObserver | None
    start_epoch: int  # records read before the topic's next rewind are not for it
    next: dict[int, int] = field(default_factory=dict)  # partition -> next unseen offset


@dataclass(eq=False)
class _Topic:
    subscribers: list[_Subscriber] = field(default_factory=list)
    partitions: frozenset[int] | None = None  # None until the topic shows in metadata
    rewind: bool = True  # seek back to the beginning at the next assignment
    epoch: int = 0  # rewinds done; records carry the epoch they were read in
    since: float = field(default_factory=time.monotonic)
    warned: bool = False
    # Its pool's reconcile will say when it exists (`created`, `exists`): not
    # looked up meanwhile, for at most TOPIC_EXPECTED_SECONDS.
    expected: bool = False

    def looked_for(self, now: float) -> bool:
        """Missing, and to be found by a lookup of every topic's metadata."""
        if self.partitions is not None:
            return False
        return not self.expected or now - self.since >= TOPIC_EXPECTED_SECONDS


# (topic, partition, offset, epoch, decoded value)
_Item = tuple[str, int, int, int, Event | IPUnpaused | SiteAction]


class ClusterReader:
    """The one consumer (and thread) reading every followed topic of one cluster."""

    def __init__(
        self, bootstrap: str, loop: asyncio.AbstractEventLoop, factory: ConsumerFactory
    ) -> None:
        self.bootstrap = bootstrap
        self.failed_records = 0
        self._loop = loop
        self._factory = factory
        self._topics: dict[str, _Topic] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._assigned = threading.Condition()
        self._assignments = 0  # assignments made, so `unsubscribe_all` can wait for one
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"events-{bootstrap}", daemon=True)
        self._thread.start()

    def subscribe(
        self,
        topic: str,
        on_event: Observer,
        on_unpause: UnpauseObserver | None,
        on_site_action: SiteActionObserver | None = None,
        expected: bool = False,
    ) -> None:
        with self._lock:
            t = self._topics.get(topic)
            if t is None:
                t = self._topics[topic] = _Topic(expected=expected)
            if any(s.on_event == on_event for s in t.subscribers):
                return
            t.subscribers.append(
                _Subscriber(on_event, on_unpause, on_site_action, start_epoch=t.epoch + 1)
            )
            t.rewind = True
        self._changed.set()

    def created(self, topic: str, partitions: int) -> None:
        """`topic` was just created with `partitions` partitions (by this operator's
        pool reconcile): read it without asking the cluster for every topic's
        metadata to find it. A topic not followed (yet) is looked for as before."""
        with self._lock:
            t = self._topics.get(topic)
            if t is None or t.partitions is not None:
                return
            t.partitions = frozenset(range(partitions))
        self._changed.set()

    def exists(self, topic: str) -> None:
        """`topic` exists, its partitions unknown here: looked up if still missing."""
        with self._lock:
            t = self._topics.get(topic)
            if t is not None:
                t.expected = False

    def unsubscribe_all(self, topic: str, timeout_s: float = STOP_JOIN_SECONDS) -> None:
        """Stop reading `topic`; returns once the consumer no longer has it
        (the pool's topics may be deleted next). Blocking, at most `timeout_s`."""
        with self._lock:
            if self._topics.pop(topic, None) is None:
                return
        with self._assigned:
            seen = self._assignments
            self._changed.set()
            self._assigned.wait_for(
                lambda: self._assignments > seen or not self._thread.is_alive(), timeout_s
            )

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=STOP_JOIN_SECONDS)

    # -- the reader thread -------------------------------------------------

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        try:
            while consumer is None and not self._stop.is_set():
                try:
                    consumer = self._factory(self.bootstrap)
                except Exception as exc:
                    log.warning("cannot reach %s for events: %s", self.bootstrap, exc)
                    self._stop.wait(CLIENT_RETRY_SECONDS)
            looked, pause, assigned = 0.0, TOPIC_RETRY_SECONDS, -ASSIGN_PAUSE_SECONDS
            while consumer is not None and not self._stop.is_set():
                try:
                    now = time.monotonic()
                    due = self._waiting() and now - looked >= pause
                    turn = now - assigned >= ASSIGN_PAUSE_SECONDS
                    if (self._changed.is_set() and turn) or due:
                        self._assign(consumer, look=due)
                        assigned = time.monotonic()
                        if due:
                            looked = assigned
                            pause = lookup_pause(looked - now)
                    if not consumer.assignment():
                        if self._changed.is_set():  # a change waiting for its turn
                            self._stop.wait(ASSIGN_PAUSE_SECONDS - (time.monotonic() - assigned))
                        else:
                            self._changed.wait(POLL_TIMEOUT_MS / 1000)
                        continue
                    self._read(consumer)
                except Exception:
                    log.exception("reading events from %s failed; retrying", self.bootstrap)
                    self._stop.wait(CLIENT_RETRY_SECONDS)
        finally:
            if consumer is not None:
                with contextlib.suppress(Exception):
                    consumer.close()

    def _waiting(self) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(t.looked_for(now) for t in self._topics.values())

    def _assign(self, consumer: KafkaConsumer, look: bool) -> None:
        """Assign every followed topic known to exist; `look`: ask the cluster
        for the ones not seen yet (paced by the caller: `lookup_pause`)."""
        self._changed.clear()
        with self._lock:
            now = time.monotonic()
            missing = [name for name, t in self._topics.items() if t.looked_for(now)]
        found: dict[str, frozenset[int]] = {}
        if missing and look:
            known = consumer.topics()  # one metadata request for every missing topic
            for name in missing:
                if name in known:
                    found[name] = frozenset(consumer.partitions_for_topic(name) or ())
        assigned: list[TopicPartition] = []
        rewind: list[TopicPartition] = []
        with self._lock:
            for name, t in self._topics.items():
                if found.get(name):
                    t.partitions = found[name]
                if t.partitions is None:
                    if not t.warned and time.monotonic() - t.since > TOPIC_MISSING_WARN_SECONDS:
                        t.warned = True
                        log.warning("events topic %s still does not exist", name)
                    continue
                tps = [TopicPartition(name, p) for p in sorted(t.partitions)]
                assigned.extend(tps)
                if t.rewind:
                    t.rewind = False
                    t.epoch += 1  # records read from here on are the rewound ones
                    rewind.extend(tps)
            consumer.assign(assigned)
            if rewind:
                consumer.seek_to_beginning(*rewind)
        with self._assigned:
            self._assignments += 1
            self._assigned.notify_all()

    def _read(self, consumer: KafkaConsumer) -> None:
        polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        if not polled:
            return
        with self._lock:
            epochs = {name: t.epoch for name, t in self._topics.items()}
        batch: list[_Item] = []
        for tp, records in polled.items():
            epoch = epochs.get(tp.topic)
            if epoch is None:
                continue  # unfollowed meanwhile
            for r in records:
                if r.value is None:
                    continue
                try:  # decoded here, so the event loop only applies
                    value = decode_events_value(r.value)
                except WireError:  # not an event a relay wrote: nothing to tally
                    continue
                if isinstance(value, WarmupUsage):  # between relays: nothing to tally
                    continue
                batch.append((tp.topic, tp.partition, r.offset, epoch, value))
        if batch:  # one wake-up of the loop per poll, records in order per partition
            with contextlib.suppress(RuntimeError):  # the loop closed: we are stopping
                self._loop.call_soon_threadsafe(self._dispatch, batch)

    # -- on the event loop -------------------------------------------------

    def _dispatch(self, batch: list[_Item]) -> None:
        current = ""
        subscribers: list[_Subscriber] = []
        for topic, partition, offset, epoch, value in batch:
            if topic != current:
                current = topic
                with self._lock:
                    t = self._topics.get(topic)
                    subscribers = list(t.subscribers) if t is not None else []
            for s in subscribers:
                if epoch < s.start_epoch or offset < s.next.get(partition, 0):
                    continue  # read before its rewind, or already seen
                s.next[partition] = offset + 1
                try:
                    if isinstance(value, IPUnpaused):
                        if s.on_unpause is not None:
                            s.on_unpause(value)
                    elif isinstance(value, SiteAction):
                        if s.on_site_action is not None:
                            s.on_site_action(value)
                    else:
                        s.on_event(value)
                except Exception:
                    self.failed_records += 1
                    log.exception("%s: could not apply the record at offset %d", topic, offset)


class EventsHub:
    """Follows pools' events topics with one `ClusterReader` per Kafka cluster.

    `follow` may be called from any thread (kopf daemons run in threads);
    observers always run on the operator's event loop, given to `start`.
    `clients` counts the Kafka consumers made, which tests hold bounded.
    """

    def __init__(self, factory: ConsumerFactory = default_consumer) -> None:
        self._readers: dict[str, ClusterReader] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._factory = factory
        self.clients = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _counted_factory(self, bootstrap: str) -> KafkaConsumer:
        consumer = self._factory(bootstrap)
        self.clients += 1
        return consumer

    def follow(
        self,
        bootstrap: str,
        topic: str,
        observer: Observer,
        on_unpause: UnpauseObserver | None = None,
        on_site_action: SiteActionObserver | None = None,
        expected: bool = False,
    ) -> None:
        """Call `observer` with every event on `topic`, from its beginning,
        `on_unpause` with every un-pause record and `on_site_action` with every
        site action (`contracts.site_actions`); idempotent per observer.
        `expected`: the caller will say when the topic exists (`created`,
        `exists`), so it is not looked up meanwhile (`TOPIC_EXPECTED_SECONDS`)."""
        with self._lock:
            reader = self._readers.get(bootstrap)
            if reader is None:
                if self._loop is None:
                    raise RuntimeError("EventsHub.follow before start")
                reader = ClusterReader(bootstrap, self._loop, self._counted_factory)
                self._readers[bootstrap] = reader
        reader.subscribe(topic, observer, on_unpause, on_site_action, expected)

    def created(self, bootstrap: str, topic: str, partitions: int) -> None:
        """`topic` was just created with `partitions` partitions: followed, it is
        read at once. With 1,000 pools created together, finding each new events
        topic by a lookup of every topic's metadata (thousands) was the reader's
        main cost and what starved kafka-python's I/O loop ("blocking the event
        loop"). Not blocking."""
        with self._lock:
            reader = self._readers.get(bootstrap)
        if reader is not None:
            reader.created(topic, partitions)

    def exists(self, bootstrap: str, topic: str) -> None:
        """`topic` exists (a reconcile found it made): looked up if still missing. Not blocking."""
        with self._lock:
            reader = self._readers.get(bootstrap)
        if reader is not None:
            reader.exists(topic)

    def unfollow(self, bootstrap: str, topic: str) -> None:
        """Stop reading `topic` (its pool is gone); its observers get nothing more.
        Returns once the reader has let go of it. Blocking (briefly)."""
        with self._lock:
            reader = self._readers.get(bootstrap)
        if reader is not None:
            reader.unsubscribe_all(topic)

    def forget(self, bootstrap: str, topic: str) -> None:
        """As `unfollow`, without waiting: for the event loop."""
        with self._lock:
            reader = self._readers.get(bootstrap)
        if reader is not None:
            reader.unsubscribe_all(topic, timeout_s=0)

    def stop(self) -> None:
        with self._lock:
            readers = list(self._readers.values())
            self._readers.clear()
        for r in readers:
            r.request_stop()  # all at once, then wait: stopping is one poll timeout, not N
        for r in readers:
            r.stop()
