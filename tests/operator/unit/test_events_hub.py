"""The operator's shared events reader (issue 12, point 8), over an in-memory consumer.

One consumer per cluster, whatever the number of followed topics; every
subscriber sees every record of its topic once, in order, from the beginning,
even when it joins late or its topic appears after it was followed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kafka import TopicPartition

from mailpipe.contracts.warmup import IPUnpaused, encode_unpaused
from mailpipe.contracts.wire import Disposition, Event, encode
from mailpipe.operator.events_hub import ASSIGN_PAUSE_SECONDS, TOPIC_RETRY_SECONDS, EventsHub

WAIT_SECONDS = 10.0
BOOTSTRAP = "kafka:9092"


@dataclass
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None


class FakeConsumer:
    """KafkaConsumer's manual-assignment surface over a dict of partition logs.
    A partition assigned without a seek starts at its end, as Kafka's default."""

    def __init__(self, logs: dict[str, dict[int, list[bytes]]]) -> None:
        self.logs = logs
        self.lock = threading.Lock()
        self.position: dict[TopicPartition, int] = {}
        self.closed = False

    def topics(self) -> set[str]:
        with self.lock:
            return set(self.logs)

    def partitions_for_topic(self, topic: str) -> set[int]:
        with self.lock:
            return set(self.logs.get(topic, {}))

    def assign(self, tps: list[TopicPartition]) -> None:
        with self.lock:
            self.position = {
                tp: self.position.get(tp, len(self.logs[tp.topic][tp.partition])) for tp in tps
            }

    def assignment(self) -> set[TopicPartition]:
        return set(self.position)

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.position[tp] = 0

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[Rec]]:
        out: dict[TopicPartition, list[Rec]] = {}
        with self.lock:
            for tp, pos in self.position.items():
                log = self.logs[tp.topic][tp.partition]
                if pos < len(log):
                    out[tp] = [Rec(o, None, log[o]) for o in range(pos, len(log))]
                    self.position[tp] = len(log)
        if not out:
            time.sleep(timeout_ms / 1000 / 10)
        return out

    def close(self) -> None:
        self.closed = True


def event(i: int) -> bytes:
    return encode(
        Event(
            message_id=f"m{i}",
            recipient=f"u{i}@x.test",
            domain="x.test",
            disposition=Disposition.DELIVERED,
            time=1.0 + i,
        )
    )


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def hub_over(logs: dict[str, dict[int, list[bytes]]]) -> tuple[EventsHub, list[FakeConsumer]]:
    made: list[FakeConsumer] = []

    def factory(bootstrap: str) -> FakeConsumer:
        made.append(FakeConsumer(logs))
        return made[-1]

    hub = EventsHub(factory)  # type: ignore[arg-type]
    hub.start(asyncio.get_running_loop())
    return hub, made


async def test_many_topics_share_one_consumer_and_each_observer_sees_its_own_once() -> None:
    topics = [f"p{i}.events" for i in range(50)]
    logs = {t: {0: [event(i), event(i + 1000)], 1: [event(i + 2000)]} for i, t in enumerate(topics)}
    hub, made = hub_over(logs)
    seen: dict[str, list[str]] = {t: [] for t in topics}
    try:
        for t in topics:
            hub.follow(BOOTSTRAP, t, lambda e, t=t: seen[t].append(e.message_id))
        await until(lambda: all(len(v) == 3 for v in seen.values()))
        await asyncio.sleep(0.2)  # nothing arrives twice
        assert all(len(v) == 3 for v in seen.values())
        order = seen["p7.events"]
        assert order.index("m7") < order.index("m1007")  # in order within a partition
        assert hub.clients == 1 and len(made) == 1
    finally:
        hub.stop()
    assert made[0].closed


async def test_a_late_observer_replays_the_history_without_repeating_it_to_the_first() -> None:
    logs = {"a.events": {0: [event(1), event(2)]}}
    hub, _ = hub_over(logs)
    first: list[str] = []
    late: list[str] = []
    try:
        hub.follow(BOOTSTRAP, "a.events", lambda e: first.append(e.message_id))
        await until(lambda: len(first) == 2)
        hub.follow(BOOTSTRAP, "a.events", lambda e: late.append(e.message_id))
        await until(lambda: len(late) == 2)
        logs["a.events"][0].append(event(3))
        await until(lambda: len(late) == 3 and len(first) == 3)
        await asyncio.sleep(0.2)
        assert first == ["m1", "m2", "m3"] and late == ["m1", "m2", "m3"]
    finally:
        hub.stop()


async def test_a_topic_created_after_it_was_followed_is_read_from_its_beginning() -> None:
    logs: dict[str, dict[int, list[bytes]]] = {}
    hub, _ = hub_over(logs)
    seen: list[str] = []
    try:
        hub.follow(BOOTSTRAP, "new.events", lambda e: seen.append(e.message_id))
        await asyncio.sleep(0.3)
        logs["new.events"] = {0: [event(1), event(2)]}
        await until(lambda: seen == ["m1", "m2"])
    finally:
        hub.stop()


async def test_bad_values_and_failing_observers_do_not_stop_the_rest() -> None:
    unpause = encode_unpaused(IPUnpaused(egress_ip="127.0.0.2", time=5.0))
    logs = {"a.events": {0: [event(1), b"[" * 5000, unpause, event(2)]}}
    hub, _ = hub_over(logs)
    seen: list[str] = []
    lifted: list[str] = []

    def flaky(e: Event) -> None:
        if e.message_id == "m1":
            raise RuntimeError("boom")
        seen.append(e.message_id)

    try:
        hub.follow(BOOTSTRAP, "a.events", flaky, on_unpause=lambda u: lifted.append(u.egress_ip))
        await until(lambda: seen == ["m2"] and lifted == ["127.0.0.2"])
    finally:
        hub.stop()


async def test_an_unfollowed_topic_delivers_nothing_more() -> None:
    logs = {"a.events": {0: [event(1)]}, "b.events": {0: [event(1)]}}
    hub, _ = hub_over(logs)
    a: list[str] = []
    b: list[str] = []
    try:
        hub.follow(BOOTSTRAP, "a.events", lambda e: a.append(e.message_id))
        hub.follow(BOOTSTRAP, "b.events", lambda e: b.append(e.message_id))
        await until(lambda: a == ["m1"] and b == ["m1"])
        hub.unfollow(BOOTSTRAP, "a.events")
        await asyncio.sleep(0.3)
        logs["a.events"][0].append(event(2))
        logs["b.events"][0].append(event(2))
        await until(lambda: b == ["m1", "m2"])
        await asyncio.sleep(0.2)
        assert a == ["m1"]
    finally:
        hub.stop()


class SlowLookupConsumer(FakeConsumer):
    """A cluster whose all-topics metadata takes a while to decode, counting the lookups."""

    LOOKUP_SECONDS = 0.05

    def __init__(self, logs: dict[str, dict[int, list[bytes]]]) -> None:
        super().__init__(logs)
        self.lookups = 0

    def topics(self) -> set[str]:
        self.lookups += 1
        time.sleep(self.LOOKUP_SECONDS)
        return super().topics()


async def test_pools_followed_before_their_topics_exist_do_not_look_up_every_topic_each_time() -> (
    None
):
    """Each follow of a topic not created yet asked the cluster for the metadata of
    all its topics: with 1,000 pools created at once, many 7,000-topic lookups a
    second. Lookups are paced (`lookup_pause`); the topics are still read once made."""
    logs: dict[str, dict[int, list[bytes]]] = {}
    made: list[SlowLookupConsumer] = []

    def factory(bootstrap: str) -> SlowLookupConsumer:
        made.append(SlowLookupConsumer(logs))
        return made[-1]

    hub = EventsHub(factory)  # type: ignore[arg-type]
    hub.start(asyncio.get_running_loop())
    seen: list[str] = []
    try:
        started = time.monotonic()
        for i in range(150):
            hub.follow(BOOTSTRAP, f"p{i}.events", lambda e: seen.append(e.message_id))
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
        (consumer,) = made
        assert consumer.lookups <= elapsed / TOPIC_RETRY_SECONDS + 2
        logs["p149.events"] = {0: [event(1)]}
        await until(lambda: seen == ["m1"])
    finally:
        hub.stop()


class NoLookupConsumer(FakeConsumer):
    """A cluster whose all-topics lookup does not show the new topics (yet)."""

    def __init__(self, logs: dict[str, dict[int, list[bytes]]]) -> None:
        super().__init__(logs)
        self.lookups = 0

    def topics(self) -> set[str]:
        self.lookups += 1
        return set()


async def test_a_topic_the_operator_created_is_read_without_looking_it_up() -> None:
    """With 1,000 pools created together, finding each new events topic in a lookup
    of every topic's metadata was the reader's main cost (and what starved
    kafka-python's I/O loop): the reconcile that created it says so instead."""
    logs: dict[str, dict[int, list[bytes]]] = {}
    made: list[NoLookupConsumer] = []

    def factory(bootstrap: str) -> NoLookupConsumer:
        made.append(NoLookupConsumer(logs))
        return made[-1]

    hub = EventsHub(factory)  # type: ignore[arg-type]
    hub.start(asyncio.get_running_loop())
    seen: list[str] = []
    try:
        hub.follow(BOOTSTRAP, "new.events", lambda e: seen.append(e.message_id))
        await until(lambda: bool(made) and made[0].lookups > 0)
        logs["new.events"] = {0: [event(1)], 1: [event(2)]}
        hub.created(BOOTSTRAP, "new.events", 2)
        await until(lambda: sorted(seen) == ["m1", "m2"])
        hub.created(BOOTSTRAP, "unfollowed.events", 1)  # not followed: nothing to read
    finally:
        hub.stop()


class CountingConsumer(FakeConsumer):
    """Counts assignments: each makes kafka-python refresh every assigned topic's metadata."""

    def __init__(self, logs: dict[str, dict[int, list[bytes]]]) -> None:
        super().__init__(logs)
        self.assigns = 0

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigns += 1
        super().assign(tps)


async def test_topics_created_one_after_another_are_assigned_together() -> None:
    """Re-assigning for each new events topic refreshed the metadata of every assigned
    topic each time: with 1,000 pools created together, a 1,000-topic answer decoded
    a dozen times a second. Changes are assigned together, at most once a pace."""
    logs: dict[str, dict[int, list[bytes]]] = {}
    made: list[CountingConsumer] = []

    def factory(bootstrap: str) -> CountingConsumer:
        made.append(CountingConsumer(logs))
        return made[-1]

    hub = EventsHub(factory)  # type: ignore[arg-type]
    hub.start(asyncio.get_running_loop())
    seen: list[str] = []
    try:
        started = time.monotonic()
        for i in range(100):
            topic = f"p{i}.events"
            hub.follow(BOOTSTRAP, topic, lambda e: seen.append(e.message_id))
            logs[topic] = {0: [event(i)]}
            hub.created(BOOTSTRAP, topic, 1)
            await asyncio.sleep(0.01)
        await until(lambda: len(seen) == 100)
        elapsed = time.monotonic() - started
        (consumer,) = made
        assert consumer.assigns <= elapsed / ASSIGN_PAUSE_SECONDS + 2
    finally:
        hub.stop()


class LookupCountingConsumer(FakeConsumer):
    def __init__(self, logs: dict[str, dict[int, list[bytes]]]) -> None:
        super().__init__(logs)
        self.lookups = 0

    def topics(self) -> set[str]:
        self.lookups += 1
        return super().topics()


async def test_a_topic_its_reconcile_will_announce_is_not_looked_up_until_it_says_so() -> None:
    """Hundreds of pools created together wait for their first reconcile at once;
    looking up their events topics meanwhile (every topic's metadata) kept
    kafka-python's I/O loop blocked. The reconcile says when the topic exists."""
    logs: dict[str, dict[int, list[bytes]]] = {"old.events": {0: [event(1)]}}
    made: list[LookupCountingConsumer] = []

    def factory(bootstrap: str) -> LookupCountingConsumer:
        made.append(LookupCountingConsumer(logs))
        return made[-1]

    hub = EventsHub(factory)  # type: ignore[arg-type]
    hub.start(asyncio.get_running_loop())
    seen: list[str] = []
    try:
        hub.follow(BOOTSTRAP, "old.events", lambda e: seen.append(e.message_id), expected=True)
        await asyncio.sleep(3 * TOPIC_RETRY_SECONDS)
        assert made[0].lookups == 0 and seen == []
        hub.exists(BOOTSTRAP, "old.events")  # found made already: looked up now
        await until(lambda: seen == ["m1"])
        assert made[0].lookups == 1
    finally:
        hub.stop()
