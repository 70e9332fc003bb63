"""Topic names are built in one place and round-trip through the relay's Kafka settings."""

from __future__ import annotations

from mailpipe.contracts.config import KafkaSettings
from mailpipe.contracts.topics import (
    CONTROL_TOPIC,
    SUPPRESSIONS_TOPIC,
    Topics,
    owned_topics,
    pool_prefix,
)


def test_a_pools_topics_follow_its_prefix() -> None:
    t = Topics.for_prefix(pool_prefix("mail", "news"), ["1m", "1h"])
    assert t.all() == [
        "mail.news.outbound",
        "mail.news.events",
        "mail.news.dlq",
        "mail.news.delay.1m",
        "mail.news.delay.1h",
    ]
    assert (t.suppressions, t.control) == ("mailpipe.suppressions", "mailpipe.campaigns")
    assert {s.seconds for s in t.delay} == {60, 3600}  # keys are DelayStep


def test_kafka_settings_name_exactly_these_topics() -> None:
    t = Topics.for_prefix("p", ["1s", "1m"])
    settings = KafkaSettings.for_topics(
        t, bootstrap_servers="k:9092", group_id="g", max_in_flight_records=10
    )
    assert settings.outbound_topic == "p.outbound" and settings.dlq_topic == "p.dlq"
    assert settings.delay_topics == {"1s": "p.delay.1s", "1m": "p.delay.1m"}
    assert settings.suppressions_topic == SUPPRESSIONS_TOPIC
    assert settings.control_topic == CONTROL_TOPIC
    assert settings.max_in_flight_records == 10
    assert settings.topics == t


def test_a_pools_own_topics_are_found_among_the_clusters() -> None:
    """What deleting a pool deletes: its outbound, events, DLQ and every delay
    topic (old steps too); never another pool's, the shared ones, or a name
    that only starts like the prefix."""
    existing = [
        "mail.news.outbound",
        "mail.news.events",
        "mail.news.dlq",
        "mail.news.delay.1m",
        "mail.news.delay.6h",  # a step the pool no longer lists
        "mail.news.delay.outbound",  # pool "mail.news.delay"'s outbound? not a step: kept
        "mail.news.delay.delay.1m",  # pool "mail.news.delay"'s delay topic: kept
        "mail.newsletter.outbound",
        "mail.news2.events",
        "mailpipe.suppressions",
        "mailpipe.campaigns",
    ]
    assert owned_topics("mail.news", existing) == [
        "mail.news.delay.1m",
        "mail.news.delay.6h",
        "mail.news.dlq",
        "mail.news.events",
        "mail.news.outbound",
    ]
