"""Issue 10 finding 8: every Kafka compression codec is readable by the relay.

kafka-python decodes compressed batches only when the codec's library is
importable (`kafka.codec`); without it a snappy, lz4 or zstd batch raises
`UnsupportedCodecError` in the consumer thread and the relay crash-loops.
This builds a compressed batch in memory and reads it back the way the
consumer does, so it needs no broker (the broker test is
tests/relay/integration/test_compression.py).
"""

from __future__ import annotations

import pytest
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder

pytestmark = pytest.mark.security

MAGIC_V2 = 2  # the record-batch format every broker since Kafka 0.11 writes
BATCH_BYTES = 1 << 20


@pytest.mark.parametrize(
    "codec",
    [
        pytest.param(DefaultRecordBatch.CODEC_SNAPPY, id="snappy"),
        pytest.param(DefaultRecordBatch.CODEC_LZ4, id="lz4"),
        pytest.param(DefaultRecordBatch.CODEC_ZSTD, id="zstd"),
        pytest.param(DefaultRecordBatch.CODEC_GZIP, id="gzip"),
    ],
)
def test_compressed_batch_round_trips(codec: int) -> None:
    builder = MemoryRecordsBuilder(MAGIC_V2, codec, BATCH_BYTES)
    values = [b'{"v":1,"n":%d}' % i + b"x" * 200 for i in range(50)]
    for i, value in enumerate(values):
        builder.append(1_700_000_000_000 + i, b"d.test", value)
    builder.close()
    records = MemoryRecords(bytes(builder.buffer()))
    batch = records.next_batch()
    assert batch is not None
    assert batch.compression_type == codec
    assert [r.value for r in batch] == values
