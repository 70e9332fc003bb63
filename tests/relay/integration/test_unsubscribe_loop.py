"""One-click unsubscribe through a real relay and real Kafka (issue 20, item 5):
the relay signs the recipient's URL into the message it delivers, a POST of
that URL to the endpoint writes a list suppression, and the relay then skips
that address for the list's records only."""

from __future__ import annotations

import email
import email.policy
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from mailpipe.contracts.config import KafkaConnection, UnsubscribeSettings
from mailpipe.contracts.feedback_token import keys_from_directory
from mailpipe.contracts.wire import ListUnsubscribe
from mailpipe.devstack.procs import free_port
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.inbound.kafka_io import AckedProducer
from mailpipe.inbound.unsubscribe import EndpointSettings, Metrics, UnsubscribeEndpoint

from .conftest import Pool, RelayProcess, wait_for
from .test_metrics_endpoint import METRICS_HOST, scrape

pytestmark = [pytest.mark.relay, pytest.mark.feedback]

BASE = "https://unsubscribe.sender.test/u/"


async def test_the_url_the_relay_sent_unsubscribes_from_its_list_only(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., RelayProcess],
    tmp_path: Path,
) -> None:
    keys = tmp_path / "feedback-keys"
    keys.mkdir()
    (keys / "ka").write_bytes(b"q" * 32)
    metrics_port = free_port(METRICS_HOST)
    rx, pool = routed_pool(
        unsubscribe=UnsubscribeSettings(base_url=BASE, keys_dir=str(keys)),
        metrics_port=metrics_port,
        metrics_address=METRICS_HOST,
    )
    relay = relays(pool)
    ann = f"ann-{uuid.uuid4().hex[:8]}@d.test"
    news = ListUnsubscribe(endpoint=True, list="news")
    pool.send(ann, list_unsubscribe=news)
    pool.flush()
    wait_for(lambda: len(rx.messages()) == 1, 60, "first message", relay)
    message = email.message_from_bytes(rx.messages()[0].data, policy=email.policy.default)
    header = str(message["List-Unsubscribe"]).strip()
    assert header.startswith(f"<{BASE}") and message["List-Unsubscribe-Post"]
    path = "/u/" + header[len(BASE) + 1 : -1]

    namespace, name = pool.config.pool.split("/")
    settings = EndpointSettings(
        namespace=namespace,
        keys_dir=str(keys),
        kafka=KafkaConnection(bootstrap_servers=pool.bootstrap),
        suppressions_topic=pool.config.kafka.suppressions_topic,
        events_topics={name: pool.config.kafka.events_topic},
    )
    producer = AckedProducer(pool.bootstrap, "test-unsubscribe")
    endpoint = UnsubscribeEndpoint(
        settings, keys_from_directory(keys), producer, Metrics.create(CollectorRegistry())
    )
    client: TestClient[Any, Any] = TestClient(TestServer(endpoint.app()))
    await client.start_server()
    try:
        assert (await client.get(path)).status == 200  # a scanner's GET: nothing happens
        for _ in range(100):  # the client is made in the background: 503 until then
            resp = await client.post(path, data={"List-Unsubscribe": "One-Click"})
            if resp.status != 503:
                break
            wait_for(lambda: producer.ready, 30, "Kafka client")
        assert resp.status == 200, await resp.text()
    finally:
        await client.close()
        producer.close()

    def outcome(list_name: str) -> list[str]:
        return [
            e["disposition"]
            for e in pool.events()
            if e["recipient"] == ann and e["message_id"] == sent[list_name]
        ]

    # Suppressions reach relays through Kafka: the records below are sent once
    # this relay holds the unsubscribe (an earlier send may still go, as RFC 8058's
    # two days allow).
    wait_for(
        lambda: "mailpipe_suppressions_held 1.0" in scrape("/metrics", metrics_port)[1],
        60,
        "the relay holding the unsubscribe",
        relay,
    )
    sent = {
        "news": pool.send(ann, list_unsubscribe=news),
        "offers": pool.send(ann, list_unsubscribe=ListUnsubscribe(endpoint=True, list="offers")),
    }
    pool.flush()
    wait_for(
        lambda: outcome("news") == ["suppressed"],
        60,
        "news record suppressed",
        relay,
    )
    wait_for(lambda: outcome("offers") == ["delivered"], 60, "offers record delivered", relay)
    assert [e["disposition"] for e in pool.events() if e["recipient"] == ann].count(
        "unsubscribed"
    ) == 1
