"""Hostile and unlucky records against a real relay (issue 10, findings 1, 2, 3 and 4).

Each test writes what an attacker or a broken producer could put on a pool's
topics and checks the relay's promise: every record reaches exactly one final
disposition (delivered, or the DLQ with the reason), the records behind a bad
one are never held up, and a bad value on a followed topic never undoes the
good ones around it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable

import pytest

from mailpipe.contracts.wire import encode
from mailpipe.devstack import samples
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.kafkakit import read_records

from .conftest import Pool, RelayProcess, relay_state, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.security]

DEEPLY_NESTED = b"[" * 1000 + b"]" * 1000
HUGE_INTEGER = b'{"v":1,"attempt":' + b"9" * 4301 + b"}"
NON_UTF8 = b'{"v":1,"id":"' + b"\xff\xfe" * 100_000 + b'"}'  # 200 KB, escapes to ~1.2 MB
DLQ_VALUE_LIMIT = 1_000_000  # Kafka's default max.message.bytes: a copy must fit under it


def _record(address: str, **extra: object) -> bytes:
    return encode(
        samples.delivery_record(address, id=f"id-{address}", campaign="test/camp", **extra)
    )


def _has_read(relay: RelayProcess, partition: str, offset: int) -> bool:
    """Whether the relay's last state dump shows `offset` of `partition` read."""
    state = relay_state(relay) or {"partitions": {}}
    return bool(state["partitions"].get(partition, {}).get("high", -1) >= offset)


def test_poison_records_go_to_the_dlq_and_the_pool_keeps_delivering(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., RelayProcess],
) -> None:
    rx, pool = routed_pool()
    relay = relays(pool)
    outbound = pool.config.kafka.outbound_topic
    trace = [("traceparent", b"00-4bf92f3577b34da6-00f067aa0ba902b7-01")]
    for value in (DEEPLY_NESTED, HUGE_INTEGER, NON_UTF8):
        pool.producer.send(outbound, key=b"d.test", value=value, partition=0, headers=trace)
    pool.producer.send(outbound, key=b"d.test", value=_record("after@d.test"), partition=0)
    pool.flush()
    wait_for(lambda: rx.recipients() == ["after@d.test"], 60, "the record behind", relay)
    wait_for(lambda: len(pool.read(pool.config.kafka.dlq_topic)) == 3, 30, "3 DLQ copies", relay)
    assert relay.alive(), f"{relay.describe()} exited: see {relay.log}"
    dead = [json.loads(v or b"") for _, v in pool.read(pool.config.kafka.dlq_topic)]
    reasons = [d["reason"] for d in dead]
    assert all(reasons), reasons
    assert "nest" in reasons[0].lower() or "depth" in reasons[0].lower(), reasons[0]
    assert "digit" in reasons[1].lower() or "integer" in reasons[1].lower(), reasons[1]
    sizes = [len(v or b"") for _, v in pool.read(pool.config.kafka.dlq_topic)]
    assert max(sizes) < DLQ_VALUE_LIMIT, sizes
    copies = read_records(pool.bootstrap, pool.config.kafka.dlq_topic)
    assert [list(c.headers) for c in copies] == [trace] * 3  # finding 11: headers kept


def test_a_bad_suppression_value_does_not_unsuppress_the_ones_behind_it(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., RelayProcess],
) -> None:
    rx, pool = routed_pool()
    topic = pool.config.kafka.suppressions_topic

    def suppression(address: str) -> bytes:
        return json.dumps(
            {"v": 1, "address": address, "reason": "unsubscribe", "time": time.time()}
        ).encode()

    pool.producer.send(topic, key=b"u0@d.test", value=suppression("u0@d.test"), partition=0)
    pool.producer.send(topic, key=b"bad@d.test", value=DEEPLY_NESTED, partition=0)
    for i in range(1, 20):
        address = f"u{i}@d.test"
        pool.producer.send(topic, key=address.encode(), value=suppression(address), partition=0)
    pool.flush()
    relay = relays(pool)
    for i in range(20):
        pool.send(f"u{i}@d.test")
    pool.send("ok@d.test")
    pool.flush()
    wait_for(lambda: len(pool.events()) == 21, 60, "21 events", relay)
    got = Counter(e["disposition"] for e in pool.events())
    assert got == Counter({"suppressed": 20, "delivered": 1}), got
    assert rx.recipients() == ["ok@d.test"]


@pytest.mark.parametrize("first_due_in", [7 * 86400, 40], ids=["next-week", "in-40s"])
def test_a_record_due_later_does_not_hold_back_one_due_sooner(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., RelayProcess],
    first_due_in: float,
) -> None:
    """Finding 4: a not-yet-due record at the head of a delay topic partition paused
    that partition until it was due, so a record due in 3 s behind one due next week
    (or in 40 s) waited a week (or 38 s)."""
    rx, pool = routed_pool()
    relay = relays(pool)
    pool.send("ready@d.test")
    pool.flush()
    wait_for(lambda: rx.recipients() == ["ready@d.test"], 60, "the relay running", relay)
    delay_1s = pool.config.kafka.delay_topics["1s"]
    first = _record("later@d.test", not_before=time.time() + first_due_in)
    pool.producer.send(delay_1s, key=b"d.test", value=first, partition=0)
    pool.flush()
    # The relay has read the first record (and, before the fix, paused the partition).
    wait_for(lambda: _has_read(relay, f"{delay_1s}/0", 0), 60, "the first record read", relay)
    soon = _record("soon@d.test", not_before=time.time() + 3)
    pool.producer.send(delay_1s, key=b"d.test", value=soon, partition=0)
    pool.flush()
    wait_for(
        lambda: rx.recipients() == ["ready@d.test", "soon@d.test"],
        20,
        "the record due in 3 s",
        relay,
    )


@pytest.mark.parametrize(
    "not_before", ["NaN", "Infinity", "-Infinity", "1e308"], ids=["nan", "inf", "-inf", "1e308"]
)
def test_absurd_times_are_refused_at_the_wire(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., RelayProcess],
    not_before: str,
) -> None:
    rx, pool = routed_pool()
    relay = relays(pool)
    value = _record("x@d.test").replace(
        b'"created_at"', b'"not_before": %s, "created_at"' % not_before.encode()
    )
    pool.send_raw(b"d.test", value)
    pool.send("after@d.test")
    pool.flush()
    wait_for(lambda: rx.recipients() == ["after@d.test"], 30, "the record behind", relay)
    wait_for(lambda: len(pool.read(pool.config.kafka.dlq_topic)) == 1, 30, "DLQ copy", relay)
    [(_, dead)] = pool.read(pool.config.kafka.dlq_topic)
    assert "not_before" in json.loads(dead or b"")["reason"]
