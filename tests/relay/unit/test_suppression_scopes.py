"""Issue 11, point 2 at the relay: a relay follows its namespace's (or its
routed pool's own) suppressions plus the obeyed ones, the platform's
never-mail list first among them, and a tenant's tombstone never lifts the
platform's entry for the same address."""

from __future__ import annotations

import pytest

from mailpipe.contracts.config import KafkaSettings
from mailpipe.contracts.suppressions import (
    CampaignStates,
    SuppressionList,
    apply_suppression,
)
from mailpipe.contracts.topics import NEVER_MAIL_TOPIC, Topics
from mailpipe.contracts.wire import Suppression, SuppressionReason, encode
from mailpipe.relay.kafka import follower
from mailpipe.relay.metrics import RelayMetrics

pytestmark = pytest.mark.security


def _value(address: str) -> bytes:
    return encode(Suppression(address=address, reason=SuppressionReason.MANUAL, time=1.0))


def test_a_tenants_tombstone_does_not_lift_the_never_mail_entry() -> None:
    suppressions = SuppressionList()
    own = apply_suppression(suppressions, lambda: None)
    never_mail = apply_suppression(suppressions, lambda: None, NEVER_MAIL_TOPIC)
    never_mail(b"ceo@x.test", _value("ceo@x.test"), False)
    own(b"ceo@x.test", _value("ceo@x.test"), False)
    own(b"ceo@x.test", None, True)  # the tenant lifts its own suppression
    assert suppressions.is_suppressed("CEO@x.test")
    never_mail(b"ceo@x.test", None, True)  # only the platform lifts its own
    assert not suppressions.is_suppressed("ceo@x.test") and len(suppressions) == 0


@pytest.mark.parametrize("routed", [False, True])
def test_a_relay_follows_exactly_its_scoped_topics(routed: bool) -> None:
    topics = Topics.for_pool("a", "news", ["1m"], routed=routed)
    settings = KafkaSettings.for_topics(topics, bootstrap_servers="unused:9092", group_id="g")
    followers = follower.relay_followers(
        settings,
        "r1",
        suppressions=SuppressionList(),
        ledger=None,  # type: ignore[arg-type]  # not called: followers are not started
        campaigns=CampaignStates(),
        metrics=RelayMetrics(),
    )
    followed = sorted(f.topic for f in followers)
    expected = [topics.events, topics.suppressions, topics.control, *topics.obeyed]
    assert followed == sorted(expected)
    assert all(t.startswith("mailpipe.a.") or t == NEVER_MAIL_TOPIC for t in followed)
