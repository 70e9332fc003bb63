"""Relay against real Kafka and recording receivers: replies, retries, DLQ, MX."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import pytest

from mailpipe.devstack.dns import Zone
from mailpipe.devstack.smtp_receiver import SMTPReceiver

from .conftest import Pool, RelayProcess, wait_for

pytestmark = pytest.mark.relay


def test_per_recipient_replies_retry_and_suppression(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
) -> None:
    rx = smtp_receiver("127.0.0.10", 0)
    rx.answer("gone@d.test", "550 5.1.1 no such user")
    rx.answer("later@d.test", "451 4.3.0 greylisted, try again", "250 2.0.0 OK")
    pool = pool_factory(routes={"d.test": [{"host": rx.host, "port": rx.port}]})
    relay = relays(pool)
    pool.send("ok@d.test", "gone@d.test", "later@d.test")
    pool.flush()

    def dispositions() -> Counter[tuple[str, str]]:
        return Counter((e["recipient"], e["disposition"]) for e in pool.events())

    wait_for(
        lambda: dispositions()[("later@d.test", "delivered")] == 1, 60, "retry delivered", relay
    )
    got = dispositions()
    assert got == Counter(
        {
            ("ok@d.test", "delivered"): 1,
            ("gone@d.test", "bounced"): 1,
            ("later@d.test", "deferred"): 1,
            ("later@d.test", "delivered"): 1,
        }
    )
    # The first transaction carried all three recipients; the retry only the deferred one.
    assert [m.rcpt_tos for m in rx.messages()] == [("ok@d.test",), ("later@d.test",)]
    assert rx.handler.rcpt_replies[:3] == [
        ("ok@d.test", "250 2.0.0 OK"),
        ("gone@d.test", "550 5.1.1 no such user"),
        ("later@d.test", "451 4.3.0 greylisted, try again"),
    ]
    suppressions = pool.read(pool.config.kafka.suppressions_topic)
    assert [k for k, _ in suppressions] == [b"gone@d.test"]

    # A later record naming the bounced address: skipped, never sent.
    pool.send("gone@d.test")
    pool.flush()
    wait_for(
        lambda: dispositions()[("gone@d.test", "suppressed")] == 1, 30, "suppressed event", relay
    )
    assert sum(r == "gone@d.test" for r, _ in rx.handler.rcpt_replies) == 1


def test_malformed_record_goes_to_dlq_and_consumption_continues(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
) -> None:
    rx = smtp_receiver("127.0.0.10", 0)
    pool = pool_factory(routes={"d.test": [{"host": rx.host, "port": rx.port}]})
    relay = relays(pool)
    pool.send_raw(b"d.test", b"this is not a record")
    pool.send("after@d.test")
    pool.flush()
    wait_for(lambda: rx.recipients() == ["after@d.test"], 30, "delivery after bad record", relay)
    [(key, value)] = pool.read(pool.config.kafka.dlq_topic)
    dead = json.loads(value or b"")
    assert key == b"d.test"
    assert dead["reason"].startswith("not JSON") and dead["value"] == "this is not a record"


def test_secondary_mx_when_primary_refuses_and_null_mx_bounces(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
    dns_zones: Callable[[list[Zone]], object],
    stack_state: object,
) -> None:
    secondary = smtp_receiver("127.0.0.12", 0)
    from mailpipe.devstack.procs import free_port

    port = secondary.port
    # The primary (127.0.0.11) listens on nothing at that port: connection refused.
    assert free_port("127.0.0.11") > 0
    dns_zones(
        [
            Zone(
                "two.test",
                mx=(("mx1.two.test", 10), ("mx2.two.test", 20)),
                a={"mx1.two.test": "127.0.0.11", "mx2.two.test": "127.0.0.12"},
            ),
            Zone("nullmx.test", null_mx=True),
        ]
    )
    dns_port = stack_state.dns_port  # type: ignore[attr-defined]
    pool = pool_factory(smtp_port=port, dns_nameserver=f"127.0.0.1:{dns_port}")
    relay = relays(pool)
    pool.send("a@two.test")
    pool.send("b@nullmx.test")
    pool.flush()
    wait_for(lambda: len(pool.events()) == 2, 30, "two events", relay)
    by_rcpt = {e["recipient"]: e for e in pool.events()}
    assert by_rcpt["a@two.test"]["disposition"] == "delivered"
    assert by_rcpt["a@two.test"]["mx_host"] == "mx2.two.test"
    assert secondary.recipients() == ["a@two.test"]
    null = by_rcpt["b@nullmx.test"]
    assert null["disposition"] == "bounced" and null["enhanced_code"] == "5.1.10"
    assert "mx_host" not in null  # no connection was attempted
