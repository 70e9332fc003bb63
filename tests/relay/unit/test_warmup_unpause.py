"""Issue 12, point 5: a warming IP paused for its bounce rate can be un-paused.

The pause is re-derived from the events topic at every start, so the lift is a
record on that topic too (`IPUnpaused`); these tests replay topics the way a
relay or the operator does after a restart.
"""

from __future__ import annotations

import pytest

from mailpipe.contracts.warmup import (
    IPUnpaused,
    WarmupLedger,
    decode_events_value,
    encode_unpaused,
)
from mailpipe.contracts.wire import Disposition, Event, WireError, encode

from .conftest import make_config

T0 = 1_700_006_400.0
IP = "127.0.0.2"
MIN_SAMPLE = 4


def ledger() -> WarmupLedger:
    config = make_config(
        egress=[
            {"address": IP, "helo": "cold.test", "warmup": True},
            {"address": "127.0.0.3", "helo": "warm.test"},
        ],
        warmup={"schedule": [{"day": 1, "daily_limit": 100}], "min_sample": MIN_SAMPLE},
    )
    return WarmupLedger(config, "operator")


def bounces(n: int, at: float, first: int = 0) -> list[Event]:
    return [
        Event(
            message_id=f"m{first + i}",
            recipient=f"u{first + i}@x.test",
            domain="x.test",
            disposition=Disposition.BOUNCED,
            time=at,
            egress_ip=IP,
            relay="relay-1",
        )
        for i in range(n)
    ]


def paused(ledger: WarmupLedger) -> str | None:
    return ledger.paused().get(IP)


def test_a_pause_says_why_and_when() -> None:
    led = ledger()
    for ev in bounces(MIN_SAMPLE, T0 + 5):
        led.observe(ev, replaying=True)
    [report] = [r for r in led.report(T0 + 6) if r.address == IP]
    assert report.paused_reason is not None and "bounce rate 100.0%" in report.paused_reason
    assert report.paused_at == T0 + 5


def test_an_unpause_record_lifts_the_pause_and_survives_a_replay() -> None:
    topic = [*bounces(MIN_SAMPLE, T0 + 5), IPUnpaused(egress_ip=IP, time=T0 + 10)]
    for replay in range(2):  # the second pass is a restart replaying the same topic
        led = ledger()
        for record in topic:
            led.observe(record, replaying=True)
        assert paused(led) is None, replay
        assert led.choose("x.test", 1, T0 + 11) == IP


def test_old_bounces_replayed_after_the_unpause_do_not_pause_again() -> None:
    """Partitions replay in any order: bounces older than the lift, read after it,
    were already judged."""
    led = ledger()
    for ev in bounces(MIN_SAMPLE, T0 + 5):
        led.observe(ev, replaying=True)
    led.observe(IPUnpaused(egress_ip=IP, time=T0 + 10), replaying=True)
    for ev in bounces(MIN_SAMPLE, T0 + 6, first=100):  # another partition, older events
        led.observe(ev, replaying=True)
    assert paused(led) is None


def test_new_bounces_after_the_unpause_pause_it_again() -> None:
    led = ledger()
    for ev in bounces(MIN_SAMPLE, T0 + 5):
        led.observe(ev, replaying=True)
    led.observe(IPUnpaused(egress_ip=IP, time=T0 + 10), replaying=False)
    for ev in bounces(MIN_SAMPLE - 1, T0 + 20, first=100):
        led.observe(ev, replaying=False)
    assert paused(led) is None  # a fresh sample: too few to judge yet
    led.observe(bounces(1, T0 + 21, first=200)[0], replaying=False)
    assert paused(led) is not None
    [report] = [r for r in led.report(T0 + 22) if r.address == IP]
    assert report.paused_at == T0 + 21


def test_a_relay_counting_its_own_live_outcomes_is_unpaused_too() -> None:
    led = ledger()
    for _ in range(MIN_SAMPLE):
        led.outcome(IP, Disposition.BOUNCED)  # the relay's own live sends
    assert paused(led) is not None
    led.observe(IPUnpaused(egress_ip=IP, time=T0 + 10), replaying=False)
    assert paused(led) is None


def test_unpause_records_round_trip_and_hostile_ones_are_wire_errors() -> None:
    record = IPUnpaused(egress_ip=IP, time=T0, by="kubectl")
    assert decode_events_value(encode_unpaused(record)) == record
    event = bounces(1, T0)[0]
    assert decode_events_value(encode(event)) == event
    hostile = [
        b'{"v":1,"kind":"ip_unpaused","egress_ip":"' + b"[" * 5000 + b'"}',
        b'{"v":1,"kind":"ip_unpaused","egress_ip":"x","time":1' + b"9" * 5000 + b"}",
        b'{"v":1,"kind":"ip_unpaused","egress_ip":"x","time":"NaN"}',
        b'{"v":1,"kind":"ip_unpaused","time":1}',
        b"[" * 10_000 + b'"kind":"ip_unpaused"',
    ]
    for value in hostile:
        with pytest.raises(WireError):
            decode_events_value(value)


def test_replay_in_any_partition_order_agrees_when_the_lift_is_on_every_partition() -> None:
    """The operator writes the lift to every partition. Whatever order a reader
    replays the partitions in, bounces after the lift pause the IP again and
    bounces before it do not."""
    partitions = [
        [*bounces(MIN_SAMPLE, T0 + 5), IPUnpaused(egress_ip=IP, time=T0 + 10)],
        [IPUnpaused(egress_ip=IP, time=T0 + 10), *bounces(MIN_SAMPLE, T0 + 20, first=100)],
        [*bounces(2, T0 + 6, first=200), IPUnpaused(egress_ip=IP, time=T0 + 10)],
    ]
    for order in ([0, 1, 2], [1, 0, 2], [2, 1, 0], [1, 2, 0]):
        led = ledger()
        for p in order:
            for record in partitions[p]:
                led.observe(record, replaying=True)
        [report] = [r for r in led.report(T0 + 30) if r.address == IP]
        assert report.paused_at == T0 + 20, order
