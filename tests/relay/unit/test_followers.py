"""What the relay does with each record of its followed topics (no broker:
the apply functions are called the way `TopicFollower` calls them).

Own live events are skipped before decoding: the ledger counted them when
they were sent. Bad records are ignored, tombstones lift.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from mailpipe.contracts.suppressions import (
    UNDECODABLE_SUPPRESSION,
    CampaignStates,
    SuppressionList,
    apply_suppression,
)
from mailpipe.contracts.warmup import WarmupLedger
from mailpipe.contracts.wire import (
    CampaignControl,
    CampaignState,
    Disposition,
    Event,
    Suppression,
    SuppressionReason,
    encode,
)
from mailpipe.relay.kafka import follower


class Ledger:
    def __init__(self) -> None:
        self.seen: list[tuple[str | None, bool]] = []

    def observe(self, event: Event, replaying: bool) -> None:
        self.seen.append((event.relay, replaying))


def event(relay: str) -> bytes:
    return encode(
        Event(
            message_id="m1",
            recipient="a@x.test",
            domain="x.test",
            disposition=Disposition.DELIVERED,
            time=1.0,
            egress_ip="127.0.0.2",
            relay=relay,
        )
    )


def test_own_live_events_are_skipped_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger()
    apply = follower.apply_event(cast(WarmupLedger, ledger), "relay-1", lambda: None)
    apply(b"k", event("relay-1"), False)  # replay: our own history counts
    apply(b"k", event("relay-2"), True)  # another replica, live
    apply(b"k", b"not json", True)  # bad: ignored
    apply(b"k", None, True)
    assert ledger.seen == [("relay-1", True), ("relay-2", False)]

    def never(_: Any) -> Event:
        raise AssertionError("decoded an own live event")

    monkeypatch.setattr(follower, "decode_events_value", never)
    apply(b"k", event("relay-1"), True)
    assert ledger.seen == [("relay-1", True), ("relay-2", False)]


def test_suppressions_are_added_lifted_and_bad_ones_still_suppress_their_key() -> None:
    suppressions = SuppressionList()
    bad: list[None] = []
    apply = apply_suppression(suppressions, lambda: bad.append(None))
    value = Suppression(address="A@X.test", reason=SuppressionReason.COMPLAINT, time=1.0)
    apply(b"a@x.test", encode(value), False)
    apply(b"b@x.test", b"{", False)
    apply(None, encode(value), False)
    assert suppressions.reason("a@x.test") == "complaint"
    assert suppressions.reason("b@x.test") == UNDECODABLE_SUPPRESSION
    assert len(suppressions) == 2 and len(bad) == 1
    apply(b"a@x.test", None, True)  # tombstone
    assert not suppressions.is_suppressed("a@x.test")


def test_campaign_control_and_its_tombstone() -> None:
    campaigns = CampaignStates()
    bad: list[None] = []
    apply = follower.apply_control(campaigns, lambda: bad.append(None))
    control = CampaignControl(campaign="ns/c", state=CampaignState.PAUSED, time=1.0)
    apply(b"ns/c", encode(control), True)
    apply(b"ns/d", b"garbage", True)
    assert campaigns.state("ns/c") == "paused" and len(bad) == 1
    apply(b"ns/c", None, True)
    assert campaigns.state("ns/c") is None


def test_an_apply_that_raises_loses_nothing_else_of_its_batch() -> None:
    """Issue 10, finding 2: one bad value stopped the rest of its batch
    ("Exception in callback TopicFollower._apply_all") and the relay looked healthy."""
    from mailpipe.kafkakit import TopicFollower

    applied: list[bytes | None] = []

    def apply(key: bytes | None, value: bytes | None, live: bool) -> None:
        if value == b"boom":
            raise RuntimeError("a bug in apply")
        applied.append(key)

    f = TopicFollower("unused:9092", "t.suppressions", apply)
    f._apply_all([(b"u0", b"ok"), (b"bad", b"boom"), (b"u1", b"ok"), (b"u2", b"ok")], True)
    assert applied == [b"u0", b"u1", b"u2"] and f.failed_records == 1
