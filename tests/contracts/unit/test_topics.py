"""Topic names are built in one place, stay inside their namespace's space, and
round-trip through the relay's Kafka settings (issue 11: topics owned by their pool)."""

from __future__ import annotations

import itertools

import pytest

from mailpipe.contracts.config import KafkaSettings, RelayConfig
from mailpipe.contracts.topics import (
    NEVER_MAIL_TOPIC,
    TopicOwnershipError,
    Topics,
    namespace_space,
    owned_prefix,
    owned_topics,
    pool_group,
    pool_prefix,
)
from tests.contracts.unit.docs import relay_config_doc


def test_a_pools_topics_follow_its_prefix() -> None:
    t = Topics.for_pool("mail", "news", ["1m", "1h"])
    assert t.all() == [
        "mailpipe.mail.news.outbound",
        "mailpipe.mail.news.events",
        "mailpipe.mail.news.dlq",
        "mailpipe.mail.news.delay.1m",
        "mailpipe.mail.news.delay.1h",
    ]
    assert (t.suppressions, t.control) == ("mailpipe.mail.suppressions", "mailpipe.mail.campaigns")
    assert t.obeyed == (NEVER_MAIL_TOPIC,)
    assert {s.seconds for s in t.delay} == {60, 3600}  # keys are DelayStep


def test_kafka_settings_name_exactly_these_topics() -> None:
    t = Topics.for_pool("ns", "p", ["1s", "1m"], routed=True)
    settings = KafkaSettings.for_topics(
        t, bootstrap_servers="k:9092", group_id="g", max_in_flight_records=10
    )
    assert settings.outbound_topic == "mailpipe.ns.p.outbound"
    assert settings.delay_topics == {"1s": "mailpipe.ns.p.delay.1s", "1m": "mailpipe.ns.p.delay.1m"}
    assert settings.max_in_flight_records == 10
    assert settings.topics == t


@pytest.mark.security
@pytest.mark.parametrize(
    "prefix",
    [
        "victim.vpool",  # the finding: another tenant's topics
        "mailpipe.victim.vpool",
        "mailpipe.sec",  # the namespace's own suppression/control topics are not a pool's
        "mailpipe.sec.",
        "mailpipe.sec..x",
        "mailpipe.secret.x",  # a namespace whose name starts with this one's
        "mailpipe._cluster.never-mail",
    ],
)
def test_a_prefix_naming_another_tenants_topics_is_refused(prefix: str) -> None:
    with pytest.raises(TopicOwnershipError, match=r"must start with 'mailpipe\.sec\.'"):
        Topics.for_pool("sec", "evilpool", ["1m"], prefix=prefix)


def test_a_prefix_inside_the_namespace_is_kept() -> None:
    assert owned_prefix("sec", "p", "mailpipe.sec.legacy") == "mailpipe.sec.legacy"
    assert owned_prefix("sec", "p", None) == pool_prefix("sec", "p")


def _kafka_collision_key(topic: str) -> str:
    # Kafka refuses a topic whose name equals an existing one's with '.' -> '_'.
    return topic.replace(".", "_")


@pytest.mark.security
def test_no_two_namespaces_share_a_topic_or_a_group() -> None:
    """Every topic and group of a pool is inside its namespace's space (prefix
    ACLs hold), and none collides with another namespace's, not even by
    Kafka's '.'/'_' rule or dashes (`mailpipe-a-b-c` was the group of both
    a-b/c and a/b-c)."""
    pools = [("a", "b-c"), ("a-b", "c"), ("a", "b"), ("ab", "c"), ("sec", "evilpool")]
    owned: dict[str, set[str]] = {}
    for (ns, name), routed in itertools.product(pools, (False, True)):
        t = Topics.for_pool(ns, name, ["1m"], routed=routed)
        names = {*t.all(), t.suppressions, t.control, pool_group(ns, name)}
        assert all(n.startswith(namespace_space(ns) + ".") for n in names), names
        assert NEVER_MAIL_TOPIC in t.obeyed
        assert not NEVER_MAIL_TOPIC.startswith(namespace_space(ns) + ".")
        owned.setdefault(ns, set()).update(names)
    for a, b in itertools.combinations(owned.values(), 2):
        assert not {_kafka_collision_key(n) for n in a} & {_kafka_collision_key(n) for n in b}


@pytest.mark.security
def test_a_routed_pool_suppresses_only_within_itself() -> None:
    """Bounces obtained through `routes` go to the pool's own topic; it still
    obeys its namespace's list and the never-mail list, and writes neither."""
    plain = Topics.for_pool("a", "news", ["1m"])
    routed = Topics.for_pool("a", "mine", ["1m"], routed=True)
    assert routed.suppressions == "mailpipe.a.mine.suppressions"
    assert routed.obeyed == (plain.suppressions, NEVER_MAIL_TOPIC)
    assert routed.control == plain.control
    assert routed.compacted() == [routed.suppressions, plain.control, *routed.obeyed]


def test_a_hand_written_config_gets_its_namespaces_topics() -> None:
    """A config without suppression/control topics never falls back to a
    cluster-global one: it gets those of the namespace in `pool`."""
    config = RelayConfig.model_validate(relay_config_doc())
    assert config.kafka.suppressions_topic == "mailpipe.mail.suppressions"
    assert config.kafka.control_topic == "mailpipe.mail.campaigns"
    assert config.kafka.obeyed_suppressions_topics == [NEVER_MAIL_TOPIC]


def test_a_pools_own_topics_are_found_among_the_clusters() -> None:
    """What deleting a pool deletes: its outbound, events, DLQ and every delay
    topic (old steps too), a routed pool's own suppressions; never another
    pool's, the namespace's or the cluster's, or a name that only starts like
    the prefix."""
    existing = [
        "mailpipe.mail.news.outbound",
        "mailpipe.mail.news.events",
        "mailpipe.mail.news.dlq",
        "mailpipe.mail.news.delay.1m",
        "mailpipe.mail.news.delay.6h",  # a step the pool no longer lists
        "mailpipe.mail.news.delay.outbound",  # pool "news.delay"'s outbound? not a step
        "mailpipe.mail.news.delay.delay.1m",  # pool "news.delay"'s delay topic: kept
        "mailpipe.mail.newsletter.outbound",
        "mailpipe.mail.news2.events",
        "mailpipe.mail.news.suppressions",  # its own, were it routed
        "mailpipe.mail.news.submitted",  # its submission endpoint's ledger
        "mailpipe.mail.suppressions",
        "mailpipe.mail.campaigns",
        NEVER_MAIL_TOPIC,
    ]
    assert owned_topics("mailpipe.mail.news", existing) == [
        "mailpipe.mail.news.delay.1m",
        "mailpipe.mail.news.delay.6h",
        "mailpipe.mail.news.dlq",
        "mailpipe.mail.news.events",
        "mailpipe.mail.news.outbound",
        "mailpipe.mail.news.submitted",
        "mailpipe.mail.news.suppressions",
    ]
