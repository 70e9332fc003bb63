"""Engine behaviour with in-memory ports: dispositions, commits, head-of-line."""

from __future__ import annotations

import json

from mailpipe.contracts.wire import decode_record
from mailpipe.relay.ports import TopicPartition

from .conftest import Harness, make_config, record_bytes


async def test_per_recipient_replies_give_one_event_each(harness: Harness) -> None:
    t = harness.transport
    t.answer("ok@d.test", "250 2.0.0 OK")
    t.answer("gone@d.test", "550 5.1.1 no such user")
    t.answer("later@d.test", "451 4.3.0 try again")
    harness.put(record_bytes("ok@d.test", "gone@d.test", "later@d.test"))
    await harness.run_until(lambda: len(harness.events()) == 3)

    got = {e["recipient"]: e["disposition"] for e in harness.events()}
    assert got == {"ok@d.test": "delivered", "gone@d.test": "bounced", "later@d.test": "deferred"}
    [(key, value)] = harness.sink.topics["mailpipe.suppressions"]
    assert key == b"gone@d.test" and json.loads(value or b"")["reason"] == "hard_bounce"
    [(_, retry_bytes)] = harness.sink.topics["p.delay.1m"]
    retry = decode_record(retry_bytes or b"")
    assert [r.address for r in retry.recipients] == ["later@d.test"]
    assert retry.attempt == 1 and retry.not_before is not None
    assert len(harness.transport.envelopes) == 1  # one transaction for all three


async def test_suppressed_address_is_never_sent_to(harness: Harness) -> None:
    harness.transport.answer("gone@d.test", "550 5.1.1 no such user")
    harness.put(record_bytes("gone@d.test"))
    await harness.run_until(lambda: len(harness.events()) == 1)
    harness.put(record_bytes("gone@d.test"))
    await harness.run_until(lambda: len(harness.events()) == 2)
    assert [e["disposition"] for e in harness.events()] == ["bounced", "suppressed"]
    assert len(harness.transport.envelopes) == 1


async def test_malformed_record_goes_to_dlq_and_consumption_continues(harness: Harness) -> None:
    harness.put(b"{not json")
    harness.put(record_bytes("a@d.test", subject="bad\r\nBcc: victim@x.test"))
    harness.put(record_bytes("a@d.test"))
    await harness.run_until(
        lambda: len(harness.events()) == 1 and len(harness.sink.topics["p.dlq"]) == 2
    )
    reasons = [json.loads(v or b"")["reason"] for _, v in harness.sink.topics["p.dlq"]]
    assert reasons[0].startswith("not JSON")
    assert "header injection" in reasons[1]
    await harness.run_until(
        lambda: harness.source.committed.get(TopicPartition("p.outbound", 0)) == 3
    )


async def test_commit_never_passes_an_unfinished_record(real_clock: object) -> None:
    config = make_config(throttles={"slow.test": {"messages_per_minute": 6}})  # 10 s apart
    h = Harness(config, clock=real_clock)  # type: ignore[arg-type]
    h.put(record_bytes("a@slow.test"))  # offset 0: sent at once
    h.put(record_bytes("b@slow.test"))  # offset 1: waits 10 s for its token
    for i in range(5):
        h.put(record_bytes(f"u{i}@fast.test"))  # offsets 2..6
    fast_done = lambda: sum(e["domain"] == "fast.test" for e in h.events()) == 5  # noqa: E731
    await h.run_until(lambda: fast_done() and len(h.source.commits) > 0, timeout_s=3)
    # Invariant 2: the fast domain finished although it sits behind the slow one.
    slow = [e for e in h.events() if e["domain"] == "slow.test"]
    assert len(slow) == 1
    # Invariant 1: offset 1 is unfinished, so nothing at or past it is committed.
    assert h.source.committed[TopicPartition("p.outbound", 0)] == 1


async def test_future_record_moves_to_delay_topic_and_is_held_there() -> None:
    h = Harness(make_config())
    now = h.clock.time()
    h.put(record_bytes("a@d.test", not_before=now + 3600))
    await h.run_until(lambda: len(h.sink.topics["p.delay.10m"]) == 1)
    assert h.transport.envelopes == []
    # The same record read back from the delay topic is parked and its partition paused.
    _, value = h.sink.topics["p.delay.10m"][0]
    h.put(value or b"", topic="p.delay.10m")
    await h.run_until(lambda: TopicPartition("p.delay.10m", 0) in h.source.paused)
    assert h.transport.envelopes == []


async def test_expired_after_max_age(harness: Harness) -> None:
    harness.transport.answer("later@d.test", "451 4.3.0 try again")
    created = harness.clock.time() - 4 * 24 * 3600  # older than the 3-day default
    harness.put(record_bytes("later@d.test", created_at=created))
    await harness.run_until(lambda: len(harness.events()) == 1)
    assert harness.events()[0]["disposition"] == "expired"
    assert "p.delay.1m" not in harness.sink.topics


async def test_paused_campaign_is_held_and_cancelled_campaign_dropped(harness: Harness) -> None:
    harness.engine.campaigns.set("ns/camp", "paused")
    harness.put(record_bytes("a@d.test"))
    await harness.run_until(lambda: len(harness.sink.topics["p.delay.10m"]) == 1)
    assert harness.transport.envelopes == [] and harness.events() == []

    harness.engine.campaigns.set("ns/camp", "cancelled")
    harness.put(record_bytes("b@d.test", "c@d.test"))
    await harness.run_until(lambda: len(harness.events()) == 2)
    assert {(e["recipient"], e["disposition"], e["reason"]) for e in harness.events()} == {
        ("b@d.test", "failed", "campaign_cancelled"),
        ("c@d.test", "failed", "campaign_cancelled"),
    }
    assert harness.transport.envelopes == []

    harness.engine.campaigns.set("ns/camp", "active")
    harness.put(record_bytes("d@d.test"))
    await harness.run_until(lambda: len(harness.events()) == 3)
    assert harness.events()[-1]["disposition"] == "delivered"


async def test_a_flooding_throttled_domain_spills_instead_of_starving_others(
    real_clock: object,
) -> None:
    config = make_config(
        throttles={"slow.test": {"messages_per_minute": 6}},
        kafka={
            "bootstrap_servers": "unused:9092",
            "group_id": "g",
            "outbound_topic": "p.outbound",
            "events_topic": "p.events",
            "dlq_topic": "p.dlq",
            "delay_topics": {"1m": "p.delay.1m"},
            "max_in_flight_records": 20,
            "ready_queue_per_domain": 20,
        },
    )
    h = Harness(config, clock=real_clock)  # type: ignore[arg-type]
    for i in range(30):
        h.put(record_bytes(f"s{i}@slow.test"))
    for i in range(10):
        h.put(record_bytes(f"f{i}@fast.test"))
    await h.run_until(
        lambda: sum(e["domain"] == "fast.test" for e in h.events()) == 10, timeout_s=8
    )
    spilled = [
        decode_record(v or b"").recipients[0].address for _, v in h.sink.topics["p.delay.1m"]
    ]
    assert spilled and all(a.endswith("@slow.test") for a in spilled)
