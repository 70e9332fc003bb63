"""Issue 10 finding 8: records in snappy, lz4 and zstd batches are delivered.

Many producers compress by default. Before the codec libraries were project
dependencies, kafka-python raised `UnsupportedCodecError` in the relay's
consumer thread on the first such batch and the relay exited at every start,
blocking the uncompressed records behind it too. Here each codec's batch is
produced to the real broker and the relay must deliver every record, then an
uncompressed record behind them, while staying up.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka import KafkaProducer

from mailpipe.contracts.wire import encode
from mailpipe.devstack import samples
from mailpipe.devstack.smtp_receiver import SMTPReceiver

from .conftest import Pool, RelayProcess, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.security]

CODECS = ("snappy", "lz4", "zstd")
PER_CODEC = 5  # several records, so each codec's batch holds more than one
LINGER_MS = 200  # the producer waits this long to gather records into one batch


def _value(record_id: str, recipient: str) -> bytes:
    record = samples.delivery_record(
        recipient, id=record_id, campaign="test/camp", subject="compressed", size=500
    )
    return encode(record)


def test_compressed_batches_are_delivered(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., RelayProcess],
) -> None:
    rx, pool = routed_pool()
    relay = relays(pool)
    expected: list[str] = []
    for codec in CODECS:
        producer = KafkaProducer(
            bootstrap_servers=pool.bootstrap,
            acks="all",
            compression_type=codec,
            linger_ms=LINGER_MS,
        )
        try:
            for i in range(PER_CODEC):
                rcpt = f"{codec}-{i}@d.test"
                expected.append(rcpt)
                producer.send(
                    pool.config.kafka.outbound_topic,
                    key=b"d.test",
                    value=_value(f"{codec}-{i}", rcpt),
                )
            producer.flush()
        finally:
            producer.close()
    pool.send("plain@d.test")  # uncompressed, behind the compressed batches
    pool.flush()
    expected.append("plain@d.test")

    wait_for(lambda: len(rx.recipients()) >= len(expected), 90, "every record delivered", relay)
    assert sorted(rx.recipients()) == sorted(expected)
    delivered = [e["recipient"] for e in pool.events() if e["disposition"] == "delivered"]
    assert sorted(delivered) == sorted(expected)
