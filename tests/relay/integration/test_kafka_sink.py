"""KafkaSink against the real broker: acknowledged sends, and keyed records on
exactly the partition kafka-python's own partitioner would pick (the sink
remembers partitions per key instead of hashing every time)."""

from __future__ import annotations

import asyncio

import pytest
from kafka import KafkaProducer

from mailpipe.devstack import samples
from mailpipe.kafkakit import ensure_pool_topics, read_records
from mailpipe.relay.kafka import KafkaSink

pytestmark = pytest.mark.relay


async def test_sink_acks_and_partitions_like_kafka_python(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = samples.pool_topics(kafka_bootstrap, topic_prefix, ())
    ensure_pool_topics(settings, partitions=6)
    topic = settings.events_topic
    keys = [f"ns/campaign-{i}".encode() for i in range(40)] + [b"dom0.test", b"x"]
    reference = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    acks = {k: reference.send(topic, key=k, value=b"ref") for k in keys}
    expected = {k: ack.get(timeout=30).partition for k, ack in acks.items()}
    reference.close()

    loop = asyncio.get_running_loop()
    sink = await loop.run_in_executor(None, KafkaSink, settings)
    await loop.run_in_executor(None, sink.prefetch, [topic])
    try:
        # every key twice: the second send uses the remembered partition
        await asyncio.wait_for(
            asyncio.gather(*(sink.send(topic, k, b"sink") for k in keys + keys)), 60
        )
    finally:
        sink.close()
    seen: dict[bytes, set[int]] = {}
    for r in read_records(kafka_bootstrap, topic):
        if r.value == b"sink" and r.key is not None:
            seen.setdefault(r.key, set()).add(r.partition)
    assert seen == {k: {p} for k, p in expected.items()}
