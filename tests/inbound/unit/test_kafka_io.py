"""The inbound endpoints' acknowledged producer without a broker: kafka-python's
producer replaced by a fake whose record futures the test resolves, so what
`produce` waits for, and what it raises, is seen exactly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from mailpipe.inbound import kafka_io
from mailpipe.inbound.kafka_io import AckedProducer, ProducerUnavailable
from tests.conftest import wait_for


class FakeFuture:
    """kafka-python's FutureRecordMetadata as far as `produce` uses it."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[Any], None]] = []

    def add_both(self, callback: Callable[[Any], None]) -> None:
        self.callbacks.append(callback)

    def resolve(self, result: Any) -> None:  # called on another thread, as kafka-python does
        thread = threading.Thread(target=lambda: [cb(result) for cb in self.callbacks])
        thread.start()
        thread.join()


class FakeProducer:
    def __init__(self, **options: Any) -> None:
        self.options = options
        self.sent: list[tuple[str, bytes | None, bytes | None, FakeFuture]] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> FakeFuture:
        future = FakeFuture()
        self.sent.append((topic, key, value, future))
        return future

    def close(self, timeout: float) -> None:
        pass


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[FakeProducer]:
    """The fake clients made, in order."""
    clients: list[FakeProducer] = []

    def make(**options: Any) -> FakeProducer:
        clients.append(FakeProducer(**options))
        return clients[-1]

    monkeypatch.setattr(kafka_io, "KafkaProducer", make)
    return clients


async def test_produce_returns_only_once_every_record_is_acknowledged(
    made: list[FakeProducer],
) -> None:
    producer = AckedProducer("127.0.0.1:1", "test", max_block_ms=1234)
    await producer.started()
    (client,) = made
    assert client.options["acks"] == "all" and client.options["enable_idempotence"] is True
    assert client.options["max_block_ms"] == 1234
    task = asyncio.create_task(producer.produce([("a", b"k", b"1"), ("b", None, b"2")]))
    await asyncio.to_thread(wait_for, lambda: len(client.sent) == 2, 10, "both sent")
    client.sent[0][3].resolve(object())
    await asyncio.sleep(0.01)
    assert not task.done()  # the second is not acknowledged yet
    client.sent[1][3].resolve(object())
    await asyncio.wait_for(task, 10)
    assert [(t, k, v) for t, k, v, _ in client.sent] == [("a", b"k", b"1"), ("b", None, b"2")]
    producer.close()


async def test_a_failed_record_raises_after_every_record_settled(
    made: list[FakeProducer],
) -> None:
    producer = AckedProducer("127.0.0.1:1", "test")
    await producer.started()
    (client,) = made
    task = asyncio.create_task(producer.send("a", b"k", b"1"))
    await asyncio.to_thread(wait_for, lambda: len(client.sent) == 1, 10, "sent")
    client.sent[0][3].resolve(KafkaTimeoutError("no ack"))
    with pytest.raises(KafkaTimeoutError):
        await asyncio.wait_for(task, 10)
    producer.close()


async def test_without_a_client_produce_raises_at_once_and_started_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(**options: Any) -> None:
        raise KafkaConnectionError("no broker")

    monkeypatch.setattr(kafka_io, "KafkaProducer", refuse)
    producer = AckedProducer("127.0.0.1:1", "test")
    with pytest.raises(KafkaConnectionError):
        await producer.started()
    assert not producer.ready  # and a new attempt is under way
    with pytest.raises(ProducerUnavailable, match="KafkaConnectionError: no broker"):
        await producer.produce([("a", b"k", b"1")])
    producer.close()
