"""Issue 10, Deliver 6: a batch the consumer cannot read never kills it silently.

kafka-python raises from `poll()` when a fetched batch cannot be decoded (a
codec it lacks, a batch failing its CRC). The consumer thread used to die on
the first such error: the relay exited ("Kafka consumer thread died") on every
start, a crash loop that stopped the pool, and the records of every other
partition with it. Now the thread reports the failure, waits and reads again:
records on the healthy partitions keep arriving, nothing is skipped,
`mailpipe_consumer_errors_total{error}` counts it and `/readyz` answers 503
with the reason until the reads succeed again.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.errors import CorruptRecordError

from mailpipe.devstack import samples
from mailpipe.endpoints import ScrapeEndpoint
from mailpipe.kafkakit import ensure_pool_topics
from mailpipe.relay.health import Health
from mailpipe.relay.kafka import KafkaSource
from mailpipe.relay.main import read_error_reporter
from mailpipe.relay.metrics import RelayMetrics
from tests.relay.integration.test_kafka_source import produce, take

pytestmark = [pytest.mark.faults, pytest.mark.relay]

FAILING_POLLS = 3
BAD_BATCH = "Record batch for partition t-0 at offset 0 failed crc check"


class _FailingFetches:
    """A consumer whose first polls raise as kafka-python does on a bad batch."""

    def __init__(self, consumer: KafkaConsumer, failures: int) -> None:
        self._consumer = consumer
        self.failures = failures

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise CorruptRecordError(BAD_BATCH)
        return self._consumer.poll(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class BadBatchSource(KafkaSource):
    def _make_consumer(self) -> KafkaConsumer:
        return _FailingFetches(super()._make_consumer(), FAILING_POLLS)  # type: ignore[return-value]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_a_batch_that_cannot_be_read_makes_the_relay_unready_not_dead(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = samples.pool_topics(kafka_bootstrap, topic_prefix, ())
    ensure_pool_topics(settings, partitions=2)
    topic = settings.outbound_topic
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, produce, kafka_bootstrap, topic, 0, [b"a0", b"a1"])
    await loop.run_in_executor(None, produce, kafka_bootstrap, topic, 1, [b"b0"])

    metrics, clock = RelayMetrics(), Clock()
    health = Health(clock=clock)
    endpoint = await ScrapeEndpoint(
        metrics.registry, "127.0.0.1", 0, probes=health.probes()
    ).start()
    port = endpoint.bound_port
    source = BadBatchSource(settings, [topic], on_error=read_error_reporter(metrics, health))
    health.watch("kafka consumer thread", source.thread_error)
    source.start()
    try:
        got = await take(source, 3)  # the thread outlived the failures and read on
        assert sorted(r.value for r in got) == [b"a0", b"a1", b"b0"]
        assert source.read_errors == FAILING_POLLS
        assert source.thread_error() is None

        status, body = await loop.run_in_executor(None, _get, f"http://127.0.0.1:{port}/readyz")
        assert status == 503, body
        assert "kafka consumer: CorruptRecordError" in body and "failed crc check" in body, body
        assert f"({FAILING_POLLS} times" in body, body
        status, body = await loop.run_in_executor(None, _get, f"http://127.0.0.1:{port}/healthz")
        assert (status, body) == (200, "ok\n")  # a restart would not help: live
        _, scrape = await loop.run_in_executor(None, _get, f"http://127.0.0.1:{port}/metrics")
        assert (
            f'mailpipe_consumer_errors_total{{error="CorruptRecordError"}} {FAILING_POLLS}.0'
            in scrape
        )

        clock.now += 61  # a minute without a failure: ready again
        status, body = await loop.run_in_executor(None, _get, f"http://127.0.0.1:{port}/readyz")
        assert (status, body) == (200, "ok\n")
    finally:
        await loop.run_in_executor(None, source.stop)
        await endpoint.stop()


class DyingSource(KafkaSource):
    def _make_consumer(self) -> KafkaConsumer:
        raise SystemExit("the interpreter is going")  # not an Exception: nothing to retry


async def test_a_consumer_thread_that_died_fails_liveness_with_its_reason(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = samples.pool_topics(kafka_bootstrap, topic_prefix, ())
    health = Health()
    source = DyingSource(settings, [settings.outbound_topic])
    health.watch("kafka consumer thread", source.thread_error)
    assert health.liveness() == []
    source.start()
    for _ in range(100):  # the thread fails at once; the loop only waits for it
        if health.liveness():
            break
        await asyncio.sleep(0.1)
    reasons = health.liveness()
    assert reasons == [
        "kafka consumer thread: consumer thread died: SystemExit: the interpreter is going"
    ]
    assert health.readiness() == reasons


async def test_a_relay_started_before_its_topics_exist_waits_then_reads_them_all(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """CI caught a relay joining its group right after the topics were created,
    before the broker's metadata had them: the range assignor gave it none of
    the 4 partitions ("assigned 0 of 4") and it looked again only at the next
    metadata refresh, 5 minutes later. Now the member joins only once every
    topic is known, reports the missing ones meanwhile, and never creates a
    topic itself."""
    settings = samples.pool_topics(kafka_bootstrap, topic_prefix, ())
    topic = settings.outbound_topic
    health = Health()
    metrics = RelayMetrics()
    source = KafkaSource(settings, [topic], on_error=read_error_reporter(metrics, health))
    source.start()
    loop = asyncio.get_running_loop()
    try:
        for _ in range(100):
            if source.read_errors >= 2:
                break
            await asyncio.sleep(0.1)
        reasons = health.readiness()
        assert any("topics not found on the broker" in r and topic in r for r in reasons), reasons
        # waiting did not create the topic (no auto-creation by a reader)
        admin_view = await loop.run_in_executor(None, _topics, kafka_bootstrap)
        assert topic not in admin_view

        ensure_pool_topics(settings, partitions=4)
        for p in range(4):
            await loop.run_in_executor(None, produce, kafka_bootstrap, topic, p, [f"p{p}".encode()])
        got = await take(source, 4, timeout_s=60)  # well before a metadata refresh
        assert sorted(r.value for r in got) == [b"p0", b"p1", b"p2", b"p3"]
        assert source.assignment() == {(topic, p) for p in range(4)}
    finally:
        await loop.run_in_executor(None, source.stop)


def _topics(bootstrap: str) -> set[str]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return set(consumer.topics())
    finally:
        consumer.close()
