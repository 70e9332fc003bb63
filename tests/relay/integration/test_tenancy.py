"""Issue 11, point 2 against real Kafka, dnsmasq and relay processes, with the
relay configs the operator writes (`build_relay_config`): suppression
poisoning is contained.

Before, every pool's relays wrote and obeyed the cluster-global
`mailpipe.suppressions`: 20 hard bounces in one namespace suppressed the same
recipients in another namespace's campaign, and a pool that routed a domain
to its own server answering 550 made every other pool skip that address for
good. Now a namespace's bounces suppress within the namespace, a routed
pool's only within the pool, and the platform's never-mail list applies to all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from mailpipe.contracts.config import RelayConfig
from mailpipe.contracts.topics import NEVER_MAIL_TOPIC
from mailpipe.contracts.wire import Suppression, SuppressionReason, encode, suppression_key
from mailpipe.devstack import samples
from mailpipe.devstack.dns import Zone
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.kafkakit import ensure_pool_topics
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import PoolRef, build_relay_config

from .conftest import EGRESS, MX_HOST, RelayProcess, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.security]

BOUNCES = 20  # the finding's count
EVENTS_SECONDS = 90  # three relays on a shared two-core machine
HARD_BOUNCE = "550 5.1.1 no such user"
EVENTS_POLL_MS = 200


class TenantPool:
    """A pool's relay config exactly as the operator renders it, on the test stack."""

    def __init__(self, namespace: str, name: str, bootstrap: str, tmp: Path, **spec: Any) -> None:
        parsed = SendingPoolSpec.model_validate(
            {
                "kafka": {"bootstrapServers": bootstrap, "delaySteps": ["1s", "1m"]},
                "egressIPs": [{"address": EGRESS.address, "helo": EGRESS.helo}],
                "tls": {"mode": "disabled"},
                # every receiver of the tests listens on 127.0.0.0/8
                "delivery": {"allowPrivateDestinations": True},
                **spec,
            }
        )
        rendered = build_relay_config(PoolRef(name, namespace, "uid"), parsed)
        self.config = RelayConfig.model_validate(
            {**rendered.model_dump(), "metrics_port": 0}  # no metrics server in tests
        )
        self.path = samples.write_config(self.config, tmp / f"{namespace}-{name}.yaml")
        ensure_pool_topics(self.config.kafka, partitions=2)  # the operator's job in a cluster
        self.bootstrap = bootstrap
        self.campaign = f"{namespace}/camp"
        self._events: KafkaConsumer | None = None
        self._seen: dict[str, list[str]] = {}

    def send(self, producer: KafkaProducer, *recipients: str) -> None:
        for r in recipients:
            record = samples.delivery_record(r, campaign=self.campaign)
            samples.send_record(producer, self.config.kafka.outbound_topic, record)
        producer.flush()

    def dispositions(self) -> dict[str, list[str]]:
        """recipient -> dispositions so far, read by one long-lived consumer (a
        client per look would churn sockets on a loaded machine)."""
        if self._events is None:
            self._events = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
            topic = self.config.kafka.events_topic
            tps = [TopicPartition(topic, p) for p in self._events.partitions_for_topic(topic) or ()]
            self._events.assign(tps)
            self._events.seek_to_beginning(*tps)
        for records in self._events.poll(timeout_ms=EVENTS_POLL_MS).values():
            for r in records:
                event = json.loads(r.value)
                self._seen.setdefault(event["recipient"], []).append(event["disposition"])
        return {k: list(v) for k, v in self._seen.items()}

    def close(self) -> None:
        if self._events is not None:
            self._events.close()


def test_bounces_suppress_within_their_namespace_or_pool_and_never_mail_everywhere(
    kafka_bootstrap: str,
    unique: str,
    tmp_path: Path,
    relays: Callable[..., RelayProcess],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
    dns_zones: Callable[[list[Zone]], object],
    stack_state: Any,
) -> None:
    domain = f"tenants-{unique}.test"
    rx = smtp_receiver(MX_HOST, 0)
    dns_zones([Zone(domain, mx=((f"mx.{domain}", 10),), a={f"mx.{domain}": rx.host})])
    resolved = {"smtpPort": rx.port, "dnsNameserver": f"127.0.0.1:{stack_state.dns_port}"}
    ns_a, ns_b = f"team-a-{unique}", f"team-b-{unique}"
    a_news = TenantPool(ns_a, "news", kafka_bootstrap, tmp_path, **resolved)
    a_routed = TenantPool(
        ns_a,
        "mine",
        kafka_bootstrap,
        tmp_path,
        routes={domain: [{"host": rx.host, "port": rx.port}]},
    )
    b_news = TenantPool(ns_b, "news", kafka_bootstrap, tmp_path, **resolved)

    bounced = [f"u{i}@{domain}" for i in range(BOUNCES)]
    ceo, vip = f"ceo@{domain}", f"vip@{domain}"
    for address in [*bounced, ceo]:
        rx.answer(address, HARD_BOUNCE)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    # the platform team's never-mail entry (only its principal may write the topic)
    never = Suppression(address=vip, reason=SuppressionReason.MANUAL, time=1.0)
    producer.send(NEVER_MAIL_TOPIC, key=suppression_key(vip).encode(), value=encode(never))

    try:
        # phase 1: namespace A's ordinary pool bounces 20, its routed pool bounces the CEO
        relay_a = relays(a_news, "relay-a-news")
        relay_routed = relays(a_routed, "relay-a-mine")
        a_news.send(producer, *bounced)
        a_routed.send(producer, ceo)
        wait_for(
            lambda: all("bounced" in a_news.dispositions().get(r, []) for r in bounced),
            EVENTS_SECONDS,
            "namespace A's 20 bounces",
            relay_a,
        )
        wait_for(
            lambda: "bounced" in a_routed.dispositions().get(ceo, []),
            EVENTS_SECONDS,
            "the routed 550",
            relay_routed,
        )

        # phase 2: the receiver now accepts everyone
        rx.reset([*bounced, ceo])
        relay_b = relays(b_news, "relay-b-news")  # replays its suppressions at start
        b_news.send(producer, *bounced, vip)
        a_news.send(producer, ceo, vip, bounced[0])

        def b_done() -> bool:
            return all(b_news.dispositions().get(r) for r in [*bounced, vip])

        wait_for(b_done, EVENTS_SECONDS, "namespace B's campaign", relay_b)
        wait_for(
            lambda: (
                all(len(a_news.dispositions().get(r, [])) >= 2 for r in (bounced[0],))
                and all(a_news.dispositions().get(r) for r in (ceo, vip))
            ),
            EVENTS_SECONDS,
            "namespace A's second round",
            relay_a,
        )
        a, b = a_news.dispositions(), b_news.dispositions()
    finally:
        producer.close()
        for pool in (a_news, a_routed, b_news):
            pool.close()

    assert {r: b[r] for r in bounced} == {r: ["delivered"] for r in bounced}, b
    assert b[vip] == ["suppressed"]  # the never-mail list applies in every namespace
    assert a[ceo] == ["delivered"]  # a routed 550 stays in its own pool
    assert a[vip] == ["suppressed"]
    assert a[bounced[0]] == ["bounced", "suppressed"]  # within the namespace it still holds
    assert sorted(rx.recipients()) == sorted([*bounced, ceo])
