"""A tarpit domain never holds back a healthy one (issue 10, finding 5).

A tarpit MX accepts TCP and then says nothing (or greets and then stalls).
Before the tarpit budget, 30 such records filled a 20-record read window and
a healthy domain waited for the tarpit's timeouts (32 s at a 15-s timeout,
hours at the defaults). Here the stage timeouts are two minutes, so the
healthy records can only arrive in time if the budget cut the tarpit's
attempts: they must all be delivered before any stage timeout fired, and
every tarpit record must end deferred or postponed on a delay topic, none
lost (ARCHITECTURE.md, "No head-of-line blocking").
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from mailpipe.contracts.wire import decode_record
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.kafkakit import read_records

from .conftest import Pool, RelayProcess, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.faults]

WINDOW = 20  # the read window of the finding
TARPIT_RECORDS = 30  # more than the window: on its own it fills it
HEALTHY_RECORDS = 10
BUDGET_SECONDS = 2.0
STAGE_TIMEOUT_SECONDS = 120.0  # far beyond the waits below: only the budget can free the window
DELIVERED_WITHIN_SECONDS = 60.0
ACCEPT_POLL_SECONDS = 0.2  # how often the tarpit's accept loop looks at its stop flag


class Tarpit:
    """Accepts every connection and never answers (after a greeting, if `greets`)."""

    def __init__(self, host: str, greets: bool) -> None:
        self.greets = greets
        self.listener = socket.create_server((host, 0))
        self.listener.settimeout(ACCEPT_POLL_SECONDS)
        self.host, self.port = self.listener.getsockname()[:2]
        self.accepted = 0
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            self.connections.append(conn)
            if self.greets:
                conn.sendall(b"220 tarpit.test ESMTP\r\n")  # ... and then nothing, ever

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in (*self.connections, self.listener):
            conn.close()


@pytest.fixture
def tarpit() -> Iterator[Callable[[str, bool], Tarpit]]:
    made: list[Tarpit] = []

    def make(host: str, greets: bool) -> Tarpit:
        made.append(Tarpit(host, greets))
        return made[-1]

    yield make
    for t in made:
        t.stop()


def _ids_on(pool: Pool, topics: list[str]) -> Counter[str]:
    return Counter(
        decode_record(r.value).id
        for topic in topics
        for r in read_records(pool.bootstrap, topic)
        if r.value is not None
    )


@pytest.mark.parametrize(
    ("greets", "healthy_partition"),
    [(False, 0), (True, 1)],
    ids=["silent-same-partition", "greets-then-stalls-own-partition"],
)
def test_a_tarpit_domain_does_not_hold_back_a_healthy_one(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
    tarpit: Callable[[str, bool], Tarpit],
    greets: bool,
    healthy_partition: int,
) -> None:
    pit = tarpit("127.0.0.11", greets)
    rx = smtp_receiver("127.0.0.10", 0)
    timeouts = dict.fromkeys(("greeting_seconds", "ehlo_seconds"), STAGE_TIMEOUT_SECONDS)
    pool = pool_factory(
        routes={
            "tarpit.test": [{"host": pit.host, "port": pit.port}],
            "healthy.test": [{"host": rx.host, "port": rx.port}],
        },
        kafka={"max_in_flight_records": WINDOW},
        delivery={"stall_budget_seconds": BUDGET_SECONDS, "timeouts": timeouts},
    )
    relay = relays(pool)
    # The tarpit's records first, all on partition 0: they fill the window; the
    # healthy ones behind them (on the same partition, or on their own).
    tarpit_ids = [
        pool.send(f"t{i}@tarpit.test", partition=0, campaign=None) for i in range(TARPIT_RECORDS)
    ]
    for i in range(HEALTHY_RECORDS):
        pool.send(f"h{i}@healthy.test", partition=healthy_partition, campaign=None)
    pool.flush()

    wait_for(
        lambda: len(rx.recipients()) >= HEALTHY_RECORDS,
        DELIVERED_WITHIN_SECONDS,
        "the healthy domain's records, delivered while the tarpit stalls",
        relay,
    )
    # Event-driven "promptly": the tarpit was engaged, and no stage timeout had
    # fired yet when the last healthy record arrived (they are two minutes).
    events = pool.events()
    assert pit.accepted >= 1
    assert not [e for e in events if "timeout)" in (e.get("reply") or "")]
    assert Counter(rx.recipients()) == Counter(f"h{i}@healthy.test" for i in range(HEALTHY_RECORDS))

    # None lost: every tarpit record is on a delay topic (cut and deferred: a
    # retry; or postponed, queued behind the cut), none delivered or bounced.
    delay_topics = list(pool.config.kafka.delay_topics.values())
    wait_for(
        lambda: set(tarpit_ids) <= set(_ids_on(pool, delay_topics)),
        DELIVERED_WITHIN_SECONDS,
        "every tarpit record deferred or postponed to a delay topic",
        relay,
    )
    tarpit_events = [e for e in pool.events() if e["domain"] == "tarpit.test"]
    assert {e["disposition"] for e in tarpit_events} == {"deferred"}
    assert all("over the domain's time budget" in e["reply"] for e in tarpit_events)
