"""KafkaSink against the real broker: acknowledged sends, and keyed records on
exactly the partition kafka-python's own partitioner would pick (the sink
remembers partitions per key instead of hashing every time)."""

from __future__ import annotations

import asyncio

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from mailpipe.contracts.config import KafkaSettings
from mailpipe.relay.kafka_adapter import KafkaSink, ensure_topics

pytestmark = pytest.mark.relay


async def test_sink_acks_and_partitions_like_kafka_python(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = KafkaSettings.model_validate(
        {
            "bootstrap_servers": kafka_bootstrap,
            "group_id": f"{topic_prefix}-g",
            "outbound_topic": f"{topic_prefix}.outbound",
            "events_topic": f"{topic_prefix}.events",
            "dlq_topic": f"{topic_prefix}.dlq",
            "suppressions_topic": f"{topic_prefix}.suppressions",
        }
    )
    ensure_topics(settings, partitions=6)
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
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    if r.value == b"sink" and r.key is not None:
                        seen.setdefault(r.key, set()).add(tp.partition)
    finally:
        consumer.close()
    assert seen == {k: {p} for k, p in expected.items()}
