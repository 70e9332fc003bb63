"""Engine behaviour with in-memory ports: dispositions, commits, head-of-line."""

from __future__ import annotations

import asyncio
import json

import pytest

from mailpipe.contracts.wire import decode_record
from mailpipe.relay.metrics import EXPORTED
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
    [(key, value)] = harness.sink.topics[
        "mailpipe.ns.suppressions"
    ]  # pool "ns/pool": its namespace's
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
    # ARCHITECTURE.md, "No head-of-line blocking": the fast domain finished although it sits behind
    # the slow one.
    slow = [e for e in h.events() if e["domain"] == "slow.test"]
    assert len(slow) == 1
    # ARCHITECTURE.md, "Nothing lost": offset 1 is unfinished, so nothing at or past it is
    # committed.
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


async def test_recipients_per_transaction_splits_a_large_record() -> None:
    h = Harness(make_config(throttle_default={"recipients_per_transaction": 2}))
    h.transport.answer("u3@d.test", "451 4.3.0 try again")
    h.put(record_bytes(*(f"u{i}@d.test" for i in range(5))))
    await h.run_until(lambda: len(h.events()) == 5)
    assert [e.recipients for e in h.transport.envelopes] == [
        ("u0@d.test", "u1@d.test"),
        ("u2@d.test", "u3@d.test"),
        ("u4@d.test",),
    ]
    # One record, one settlement: the deferred recipient of the second transaction retries.
    [(_, retry_bytes)] = h.sink.topics["p.delay.1m"]
    assert [r.address for r in decode_record(retry_bytes or b"").recipients] == ["u3@d.test"]


async def test_revocation_in_band_drops_queued_and_waiting_work(real_clock: object) -> None:
    config = make_config(throttles={"slow.test": {"messages_per_minute": 6}})  # 10 s apart
    h = Harness(config, clock=real_clock)  # type: ignore[arg-type]
    p0, p1 = TopicPartition("p.outbound", 0), TopicPartition("p.outbound", 1)
    delay = TopicPartition("p.delay.10m", 0)
    for i in range(3):
        h.put(record_bytes(f"s{i}@slow.test"), partition=0)  # one sent, two queued
    h.put(record_bytes("w@d.test", not_before=h.clock.time() + 3600), topic="p.delay.10m")
    stop = asyncio.Event()
    task = asyncio.create_task(h.engine.run(stop))
    try:
        async with asyncio.timeout(5):
            while len(h.events()) < 1 or h.engine.describe()["waiting"] < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            assert h.engine.describe()["queued"] == {"slow.test": 2}

            h.source.revoke([p0, delay])
            h.put(record_bytes("f@fast.test"), partition=1)
            while len(h.events()) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            state = h.engine.describe()
            assert (state["queued"], state["waiting"], state["in_flight"]) == ({}, 0, 0)
            assert set(state["partitions"]) == {"p.outbound/1"}
    finally:
        stop.set()
        await task
    assert [e["recipient"] for e in h.events()] == ["s0@slow.test", "f@fast.test"]
    assert h.source.committed[p1] == 1


async def test_postponements_are_counted_by_reason(harness: Harness) -> None:
    harness.transport.answer("later@d.test", "451 4.3.0 try again")
    harness.put(record_bytes("later@d.test"))
    harness.put(record_bytes("a@d.test", not_before=harness.clock.time() + 3600))
    await harness.run_until(lambda: len(harness.sink.topics["p.delay.1m"]) == 1)
    await harness.run_until(lambda: len(harness.sink.topics["p.delay.10m"]) == 1)
    registry = harness.engine.metrics.registry
    for reason in ("retry", "not_yet_due"):
        labels = {"domain": "d.test", "reason": reason}
        assert registry.get_sample_value("mailpipe_postponed_records_total", labels) == 1


async def test_warmup_budget_gauge_follows_the_ledger() -> None:
    h = Harness(
        make_config(
            egress=[
                {"address": "127.0.0.2", "helo": "cold.test", "warmup": True},
                {"address": "127.0.0.3", "helo": "warm.test"},
            ],
            warmup={"schedule": [{"day": 1, "daily_limit": 5}]},
        )
    )
    registry = h.engine.metrics.registry

    def budget(ip: str) -> float | None:
        return registry.get_sample_value("mailpipe_warmup_budget_remaining", {"egress_ip": ip})

    assert (budget("127.0.0.2"), budget("127.0.0.3")) == (5, -1)
    h.put(record_bytes("a@d.test", "b@d.test"))
    await h.run_until(lambda: len(h.events()) == 2)
    assert (budget("127.0.0.2"), budget("127.0.0.3")) == (3, -1)


def test_every_exported_metric_is_listed(harness: Harness) -> None:
    suffix = {"counter": "_total"}
    families = {f.name + suffix.get(f.type, "") for f in harness.engine.metrics.registry.collect()}
    assert families == set(EXPORTED)


def test_a_reload_that_cannot_be_applied_leaves_the_running_config_whole(
    harness: Harness,
) -> None:
    running = harness.engine.config
    bad = make_config(
        dkim={"domain": "d.test", "selector": "s", "private_key_path": "/nonexistent/key.pem"},
        throttles={"d.test": {"messages_per_minute": 1}},
    )
    with pytest.raises(OSError):
        harness.engine.reconfigure(bad)
    assert harness.engine.config is running
    assert harness.engine.dispatch.config is running
    assert harness.engine.scheduler.throttle("d.test") == running.throttle_for("d.test")
