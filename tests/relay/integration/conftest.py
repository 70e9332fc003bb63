"""Relay integration harness: real Kafka, real relay processes, recording receivers."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from mailpipe.contracts.config import EgressIP, RetrySettings
from mailpipe.devstack import samples
from mailpipe.devstack.harness import Child, Children
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.kafkakit import ensure_pool_topics, read_topic
from tests.conftest import wait_for

__all__ = ["Pool", "RelayProcess", "relay_state", "wait_for"]

PARTITIONS = 4  # enough for two relays to split a pool's domains
DELAY_STEPS = ("1s", "1m")
RETRY = RetrySettings(schedule_seconds=[1], max_age_seconds=3600)  # retries within the test
EGRESS = EgressIP(address="127.0.0.2", helo="egress-2.sender.test")
CAMPAIGN = "test/camp"

RelayProcess = Child  # a `mailpipe relay` child of the test


class Pool:
    """Topics and config of one test pool."""

    def __init__(self, bootstrap: str, prefix: str, tmp: Path, **overrides: Any) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.tmp = tmp
        self.config = samples.relay_config(
            f"test/{prefix}",
            samples.pool_topics(bootstrap, prefix, DELAY_STEPS),
            [EGRESS],
            retry=RETRY,
            **overrides,
        )
        self.path = samples.write_config(self.config, tmp / f"{prefix}.yaml")
        ensure_pool_topics(self.config.kafka, partitions=PARTITIONS)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")

    def send(
        self,
        *recipients: str,
        partition: int | None = None,
        campaign: str | None = CAMPAIGN,
        key: str | None = None,
        **fields: Any,
    ) -> str:
        """One record to `recipients`, keyed by `key` (default: its domain); `fields`
        as `samples.delivery_record` takes them."""
        record = samples.delivery_record(*recipients, campaign=campaign, **fields)
        topic = self.config.kafka.outbound_topic
        samples.send_record(self.producer, topic, record, partition, key)
        return record.id

    def send_raw(self, key: bytes, value: bytes) -> None:
        self.producer.send(self.config.kafka.outbound_topic, key=key, value=value)

    def flush(self) -> None:
        self.producer.flush()

    def read(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        """Everything on `topic` so far."""
        return read_topic(self.bootstrap, topic)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in self.read(self.config.kafka.events_topic) if v]

    def close(self) -> None:
        self.producer.close()


@pytest.fixture
def pool_factory(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> Iterator[Callable[..., Pool]]:
    pools: list[Pool] = []

    def make(**overrides: Any) -> Pool:
        pool = Pool(kafka_bootstrap, f"{topic_prefix}{len(pools)}", tmp_path, **overrides)
        pools.append(pool)
        return pool

    yield make
    for p in pools:
        p.close()


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Starts `mailpipe relay` children for a pool; all stopped after the test."""
    with Children(tmp_path) as children:

        def start(
            pool: Pool, name: str = "relay-a", env: dict[str, str] | None = None
        ) -> RelayProcess:
            args = ["relay", "--config", str(pool.path), "--relay-id", name]
            return children.mailpipe(name, args, env)

        yield start


STATE_LINE = "state: "  # what a relay logs on SIGUSR1: its engine's state, then "; source:"


def relay_state(relay: RelayProcess) -> dict[str, Any] | None:
    """The engine state of the relay's last SIGUSR1 dump (None before the first),
    and a new dump asked for, for the next call: a wait on the relay's inside."""
    state = None
    for line in relay.log.read_text(errors="replace").splitlines():
        if STATE_LINE in line:
            msg = json.loads(line)["msg"]
            state = json.loads(msg[len(STATE_LINE) : msg.index("; source: ")])
    relay.send_signal(signal.SIGUSR1)
    return state


MX_HOST = "127.0.0.10"  # the loopback address standing in for a recipient's MX


@pytest.fixture
def routed_pool(
    pool_factory: Callable[..., Pool], smtp_receiver: Callable[..., SMTPReceiver]
) -> Callable[..., tuple[SMTPReceiver, Pool]]:
    """A recording receiver and a pool whose `domain` is routed to it; further
    keyword arguments override the pool's relay config."""

    def make(domain: str = "d.test", **overrides: Any) -> tuple[SMTPReceiver, Pool]:
        rx = smtp_receiver(MX_HOST, 0)
        pool = pool_factory(routes={domain: [{"host": rx.host, "port": rx.port}]}, **overrides)
        return rx, pool

    return make
