"""Kafka away: the submission endpoint answers 451 4.3.0 and keeps nothing half-sent;
the client's retry once Kafka is back is delivered exactly once (issue 20, item 6).

A broker of this test's own (the session's shared one is left alone, so tests
running meanwhile see no outage). The message has recipients in two domains,
so "exactly once" covers both of its records: each recipient gets one copy,
and the committed outbound topic holds one record per domain, whether the
transaction begun during the outage was later committed (then the retry is
recognised from the ledger) or aborted (then the retry produces it).
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from mailpipe.devstack import kafka, procs
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from tests.conftest import wait_for
from tests.relay.integration.conftest import MX_HOST, Pool, RelayProcess

from .conftest import Endpoint, message

pytestmark = [pytest.mark.feedback, pytest.mark.faults, pytest.mark.relay]

BROKER_START_SECONDS = 120  # a second JVM on a loaded two-core machine
DEADLINE_SECONDS = 5  # the endpoint's wait for Kafka before 451
RECOVERY_SECONDS = 240  # broker back, coordinator loaded, producer fenced and re-made
DELIVERY_SECONDS = 90


@dataclass
class OwnBroker:
    bootstrap: str
    command: list[str]
    log: Path
    pid: int

    def ready(self) -> bool:
        try:
            return kafka.is_ready(self.bootstrap)
        except Exception:  # not listening yet, or no controller yet
            return False

    def stop(self) -> None:
        procs.stop(self.pid)

    def start(self) -> None:
        self.pid = procs.spawn(self.command, self.log)
        wait_for(self.ready, BROKER_START_SECONDS, "the test's own Kafka broker")


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    ports, command, log = kafka.prepare(tmp_path / "own-kafka")
    broker = OwnBroker(ports.bootstrap, command, log, 0)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def committed_records(bootstrap: str, topic: str) -> list[bytes]:
    """Every committed value on `topic` now, as the relay reads it (read_committed)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    try:
        from kafka import TopicPartition

        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        values: list[bytes] = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records if r.value is not None)
        return values
    finally:
        consumer.close()


def send(ep: Endpoint, rcpts: list[str], msg: str) -> tuple[int, bytes]:
    """One attempt as a client makes it: connect, STARTTLS, login, one transaction."""
    with ep.login() as c:
        c.mail("news@shop.example")
        for rcpt in rcpts:
            c.rcpt(rcpt)
        return c.data(msg)


@pytest.mark.timeout(900)  # two broker starts, an outage and a group rejoin on a loaded machine
def test_kafka_stopped_answers_451_and_the_retry_is_delivered_exactly_once(
    own_broker: OwnBroker,
    tmp_path: Path,
    topic_prefix: str,
    smtp_receiver: Callable[..., SMTPReceiver],
    relays: Callable[..., RelayProcess],
    submission: Callable[..., Endpoint],
) -> None:
    rx = smtp_receiver(MX_HOST, 0)
    route = [{"host": rx.host, "port": rx.port}]
    pool = Pool(
        own_broker.bootstrap, topic_prefix, tmp_path, routes={"d.test": route, "e.test": route}
    )
    pool.close()  # the test's producer is not needed; it would only reconnect through the outage
    relay = relays(pool)
    ep = submission(pool, kafka_deadline_seconds=DEADLINE_SECONDS)

    assert send(ep, ["first@d.test"], message(message_id="<first@shop.example>"))[0] == 250
    wait_for(
        lambda: "first@d.test" in rx.recipients(), DELIVERY_SECONDS, "the first message", relay
    )

    own_broker.stop()
    retried = message(message_id="<outage@shop.example>", to="a@d.test, b@e.test")
    rcpts = ["a@d.test", "b@e.test"]
    code, text = send(ep, rcpts, retried)
    assert (code, text[:5]) == (451, b"4.3.0"), (code, text)

    own_broker.start()
    answers: list[tuple[int, bytes]] = []

    def retry() -> bool:
        try:
            answers.append(send(ep, rcpts, retried))
        except (smtplib.SMTPException, OSError) as exc:  # the endpoint itself is fine; log it
            answers.append((0, str(exc).encode()))
        return answers[-1][0] == 250

    wait_for(retry, RECOVERY_SECONDS, "a 250 for the retried message", ep.child)
    assert all(code == 451 for code, _ in answers[:-1]), answers  # never a 5xx: nothing lost

    wait_for(
        lambda: {"a@d.test", "b@e.test"} <= set(rx.recipients()),
        RECOVERY_SECONDS,  # the relay rejoins its group on the restarted broker first
        "the retried message at both domains",
        relay,
    )
    # once more: a retry now is recognised, not sent again
    code, text = send(ep, rcpts, retried)
    assert code == 250 and b"already queued" in text, text
    outbound = committed_records(own_broker.bootstrap, pool.config.kafka.outbound_topic)
    assert len(outbound) == 3  # the first message and one record per domain of the retried one
    # wait until the relay has settled everything committed: its events name each record
    wait_for(lambda: len(pool.events()) >= 3, DELIVERY_SECONDS, "3 dispositions", relay)
    assert sorted(rx.recipients()) == ["a@d.test", "b@e.test", "first@d.test"]
