"""mailpipe.kafkakit against the real broker: topics created once with the
right partitions and compaction, topics read to their end without a group,
and a follower that replays, says when it caught up, then follows live."""

from __future__ import annotations

import asyncio

import pytest
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from mailpipe import kafkakit
from mailpipe.contracts.topics import NEVER_MAIL_TOPIC
from mailpipe.devstack import samples

pytestmark = pytest.mark.relay  # needs Kafka only, like the relay's integration tests


def cleanup_policy(bootstrap: str, topic: str) -> str | None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    text = repr(found)
    return "compact" if "'cleanup.policy'" in text and "'compact'" in text else None


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value).get(timeout=30)
    finally:
        producer.close()


def test_ensure_topics_creates_only_what_is_missing(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    plain, compacted = f"{topic_prefix}.plain", f"{topic_prefix}.compacted"
    created = kafkakit.ensure_topics(kafka_bootstrap, [plain], 3, 1, compacted=[compacted])
    assert sorted(created) == sorted([plain, compacted])
    assert kafkakit.ensure_topics(kafka_bootstrap, [plain], 5, 1, compacted=[compacted]) == []
    assert kafkakit.partition_count(kafka_bootstrap, plain) == 3  # existing ones left as they are
    assert cleanup_policy(kafka_bootstrap, compacted) == "compact"
    assert cleanup_policy(kafka_bootstrap, plain) is None
    assert kafkakit.partition_count(kafka_bootstrap, f"{topic_prefix}.missing") == 0


def test_ensure_pool_topics_creates_a_pools_set(kafka_bootstrap: str, topic_prefix: str) -> None:
    settings = samples.pool_topics(kafka_bootstrap, topic_prefix, ["1m"])
    created = kafkakit.ensure_pool_topics(settings, partitions=2)
    space = topic_prefix.rpartition(".")[0]  # the namespace's suppressions and control
    # the cluster's never-mail list exists once, made by whichever pool came first
    assert sorted(set(created) - {NEVER_MAIL_TOPIC}) == sorted(
        [
            *(f"{topic_prefix}.{t}" for t in ("outbound", "events", "dlq", "delay.1m")),
            f"{space}.suppressions",
            f"{space}.campaigns",
        ]
    )
    assert kafkakit.ensure_pool_topics(settings, partitions=2) == []
    assert kafkakit.partition_count(kafka_bootstrap, settings.outbound_topic) == 2
    assert cleanup_policy(kafka_bootstrap, settings.suppressions_topic) == "compact"
    assert cleanup_policy(kafka_bootstrap, settings.control_topic) == "compact"
    assert cleanup_policy(kafka_bootstrap, NEVER_MAIL_TOPIC) == "compact"


def test_read_topic_to_its_end_and_from_offsets(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.read"
    kafkakit.ensure_topics(kafka_bootstrap, [topic], 2, 1)
    assert kafkakit.read_topic(kafka_bootstrap, topic) == []
    assert kafkakit.end_offsets(kafka_bootstrap, topic) == {0: 0, 1: 0}
    produce(kafka_bootstrap, topic, [(b"k", b"%d" % i) for i in range(5)] + [(b"k", None)])
    ends = kafkakit.end_offsets(kafka_bootstrap, topic)
    assert sum(ends.values()) == 6
    assert kafkakit.read_topic(kafka_bootstrap, topic) == [
        *((b"k", b"%d" % i) for i in range(5)),
        (b"k", None),
    ]
    records = kafkakit.read_records(
        kafka_bootstrap, topic, since={p: 3 for p, end in ends.items() if end}
    )
    assert [(r.offset, r.value) for r in records] == [(3, b"3"), (4, b"4"), (5, None)]
    assert {r.partition for r in records} == {p for p, end in ends.items() if end}


async def test_follower_replays_then_follows_live(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.follow"
    kafkakit.ensure_topics(kafka_bootstrap, [topic], 2, 1)
    produce(kafka_bootstrap, topic, [(b"a", b"1"), (b"b", b"2")])
    seen: list[tuple[bytes | None, bool]] = []
    follower = kafkakit.TopicFollower(
        kafka_bootstrap, topic, lambda k, v, live: seen.append((v, live))
    )
    follower.start()
    try:
        await follower.wait_caught_up(timeout_s=30)
        assert sorted(seen) == [(b"1", False), (b"2", False)]  # applied before caught_up
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, produce, kafka_bootstrap, topic, [(b"c", b"3")])
        for _ in range(300):
            if len(seen) == 3:
                break
            await asyncio.sleep(0.05)
        assert seen[-1] == (b"3", True)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, follower.stop)
    assert follower.error is None


async def test_follower_of_a_missing_topic_fails_clearly(
    kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mailpipe.kafkakit.follower.TOPIC_WAIT_SECONDS", 1.0)
    follower = kafkakit.TopicFollower(kafka_bootstrap, f"{topic_prefix}.nope", lambda *_: None)
    follower.start()
    try:
        with pytest.raises(RuntimeError, match="following"):
            await follower.wait_caught_up(timeout_s=30)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, follower.stop)


async def test_read_past_now_returns_after_what_was_written_before_it(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """What another process wrote before the call is applied when it returns: the
    warm-up usage a relay wrote when a rebalance started, read by the relay that
    takes over its partitions before that one sends on a capped IP."""
    topic = f"{topic_prefix}.barrier"
    kafkakit.ensure_topics(kafka_bootstrap, [topic], 3, 1)
    seen: list[bytes | None] = []
    follower = kafkakit.TopicFollower(kafka_bootstrap, topic, lambda k, v, live: seen.append(v))
    follower.start()
    loop = asyncio.get_running_loop()
    try:
        await follower.wait_caught_up(timeout_s=30)
        written = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(30)]
        await loop.run_in_executor(None, produce, kafka_bootstrap, topic, written)
        await follower.read_past_now(timeout_s=30)
        assert sorted(v for v in seen if v is not None) == sorted(v for _, v in written)
    finally:
        await loop.run_in_executor(None, follower.stop)
    assert follower.error is None
