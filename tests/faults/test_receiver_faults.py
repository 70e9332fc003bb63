"""Faults: a receiving MTA that drops the connection mid-DATA, or never answers the final dot.

Dropped mid-DATA, the message never arrived: the relay must defer the
transaction's recipients (a temporary failure, not a bounce) and deliver them
on a retry, with no duplicate (the receiver never had the message).

Silent after the final dot (RFC 1047), the receiver may have queued the
message: the relay times out (`delivery.timeouts.data_termination_seconds`,
RFC 5321 4.5.3.2.6),
defers and retries, so each silent transaction may legitimately be received
twice: the bound is one duplicate per recipient of a silent transaction, and
the events still show exactly one final disposition per recipient.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import wait_for
from tests.relay.integration.conftest import Pool, RelayProcess

from .conftest import count
from .receivers import Faults, FaultyReceiver

pytestmark = [pytest.mark.faults, pytest.mark.relay]

DOMAIN = "rx.test"
TOTAL = 40
FAULTY_TRANSACTIONS = 3
FINAL_DOT_TIMEOUT_SECONDS = 3.0  # short, so the silent receiver's stalls cost seconds, not minutes


def _run(
    rx: FaultyReceiver,
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
) -> tuple[Pool, list[str]]:
    pool = pool_factory(
        routes={DOMAIN: [{"host": rx.host, "port": rx.port}]},
        delivery={"timeouts": {"data_termination_seconds": FINAL_DOT_TIMEOUT_SECONDS}},
    )
    sent = [f"u{i}@{DOMAIN}" for i in range(TOTAL)]
    for rcpt in sent:
        pool.send(rcpt)
    pool.flush()
    relay = relays(pool)

    def done() -> bool:
        t = count(pool, sent, rx.recipients())
        return t.lost == 0 and t.stalled == 0

    wait_for(done, 90, "every recipient delivered with a final disposition", relay)
    return pool, sent


def test_a_receiver_dropping_mid_data_defers_then_delivers_once(
    faulty_receiver: Callable[[Faults], FaultyReceiver],
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
) -> None:
    rx = faulty_receiver(Faults(drop_in_data=FAULTY_TRANSACTIONS))
    pool, sent = _run(rx, pool_factory, relays)
    t = count(pool, sent, rx.recipients())
    print(f"drop mid-DATA: {t}")
    assert rx.faults.dropped == FAULTY_TRANSACTIONS
    assert (t.lost, t.stalled, t.finals_twice) == (0, 0, 0), t
    assert t.duplicated == 0, t  # the receiver never had the dropped messages
    assert t.deferred >= FAULTY_TRANSACTIONS, t  # each cut transaction deferred, none bounced
    assert not any(e["disposition"] == "bounced" for e in pool.events()), t


def test_a_receiver_silent_after_data_times_out_defers_and_delivers(
    faulty_receiver: Callable[[Faults], FaultyReceiver],
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
) -> None:
    rx = faulty_receiver(Faults(silent_after_data=FAULTY_TRANSACTIONS))
    pool, sent = _run(rx, pool_factory, relays)
    t = count(pool, sent, rx.recipients())
    print(f"silent after DATA: {t}")
    assert rx.faults.silenced == FAULTY_TRANSACTIONS
    assert (t.lost, t.stalled, t.finals_twice) == (0, 0, 0), t
    # RFC 1047: what the receiver got before going silent may arrive again.
    assert t.duplicated <= rx.faults.silenced_recipients, t
    assert t.deferred >= FAULTY_TRANSACTIONS, t
    assert not any(e["disposition"] == "bounced" for e in pool.events()), t
