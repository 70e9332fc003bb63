"""The site actions table (issue 21): one action per site, IP and kind, the one
that ends last; a reply during an action asks for nothing new; a repeat right
after one ended doubles it; replay order does not matter."""

from __future__ import annotations

import itertools

from mailpipe.contracts.bounces import ActionKind, ReplyAction
from mailpipe.contracts.site_actions import (
    MAX_REPLY_CHARS,
    SiteAction,
    SiteActions,
    encode_site_action,
)
from mailpipe.contracts.warmup import decode_events_value

T0 = 1_700_000_000.0
SUSPEND = ReplyAction(kind=ActionKind.SUSPEND, duration_seconds=60, max_duration_seconds=240)


def decide(table: SiteActions, now: float, ip: str = "203.0.113.5") -> SiteAction | None:
    return table.decide(
        "google.com",
        ip,
        SUSPEND,
        now,
        reply="421 4.7.28 slow",
        bounce_class="rate_limited",
        relay="r1",
    )


def test_a_reply_suspends_the_site_for_its_ip_only() -> None:
    table = SiteActions()
    record = decide(table, T0)
    assert record is not None and record.until == T0 + 60
    assert table.apply(record)
    assert table.suspended("google.com", "203.0.113.5", T0 + 59)
    assert not table.suspended("google.com", "203.0.113.6", T0 + 1)
    assert not table.suspended("outlook.com", "203.0.113.5", T0 + 1)
    assert not table.suspended("google.com", "203.0.113.5", T0 + 60)  # lifted on time
    assert table.suspension_end("google.com", ["203.0.113.5", "203.0.113.6"], T0) == T0 + 60


def test_replies_during_an_action_ask_for_nothing_and_a_repeat_after_it_doubles() -> None:
    table = SiteActions()
    first = decide(table, T0)
    assert first is not None and table.apply(first)
    assert decide(table, T0 + 30) is None  # an attempt under way when it began
    second = decide(table, T0 + 61)  # refused again right after: twice as long
    assert second is not None and second.seconds == 120 and table.apply(second)
    third = decide(table, T0 + 61 + 121)
    assert third is not None and third.seconds == 240 and table.apply(third)
    fourth = decide(table, third.until + 1)
    assert fourth is not None and fourth.seconds == 240  # capped
    later = decide(table, fourth.until + fourth.seconds + 1)  # quiet for a while: afresh
    assert later is not None and later.seconds == 60


def test_replay_in_any_order_gives_the_same_table() -> None:
    records = [
        SiteAction(site="s", egress_ip="ip", action=ActionKind.SUSPEND, time=T0, until=T0 + u)
        for u in (60, 600, 120)
    ]
    for order in itertools.permutations(records):
        table = SiteActions()
        for r in order:
            table.apply(r)
        assert [a.until for a in table.active(T0)] == [T0 + 600]


def test_the_record_reads_back_from_the_events_topic() -> None:
    record = SiteAction(
        site="google.com",
        egress_ip="203.0.113.5",
        action=ActionKind.SLOW,
        time=T0,
        until=T0 + 3600,
        messages_per_minute=10,
        rate_factor=0.5,
        reply="x" * MAX_REPLY_CHARS,
        relay="r1",
    )
    assert decode_events_value(encode_site_action(record)) == record


def test_a_long_multi_line_reply_is_kept_as_one_short_line() -> None:
    table = SiteActions()
    record = table.decide(
        "s",
        "ip",
        SUSPEND,
        T0,
        reply="421-4.7.28 a\n421 4.7.28 " + "b" * 1000,
        bounce_class=None,
        relay=None,
    )
    assert record is not None
    assert "\n" not in record.reply and len(record.reply) == MAX_REPLY_CHARS
