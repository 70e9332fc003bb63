"""The finished-ahead offsets of a partition, carried in its commit's metadata.

Kafka stores one position per partition, but records finish out of order:
when a partition moves to another relay (a rebalance, a relay rolled or
stopped), the records finished past the committed position would be sent a
second time by the new owner. Every commit therefore carries, in the
metadata string Kafka keeps beside the offset, which offsets past it are
finished; the new owner reads it back with the committed offset
(`KafkaSource`) and skips them (`offsets.OffsetTracker.learn`).

Format: ``mp1:`` then URL-safe base64 of the zlib-compressed bitmap whose bit
``i`` (little-endian within each byte) says offset ``position + 1 + i`` is
finished (``position`` itself is the lowest unfinished one, never finished).
The bitmap spans at most the read window, so it compresses to a few hundred
characters; if it does not fit METADATA_MAX_CHARS (the broker refuses a
commit whose metadata is over `offset.metadata.max.bytes`, 4,096 by
default) the highest offsets are dropped until it fits. Dropping is safe:
an offset not listed is sent again (a duplicate), never skipped (a loss).
Metadata this module did not write (another client's, or none) decodes to
nothing. Pure: no Kafka client here, unit-tested in
tests/relay/unit/test_finished_ahead.py.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Collection

PREFIX = "mp1:"
# Under the broker's default offset.metadata.max.bytes (4,096), with room to spare.
METADATA_MAX_CHARS = 3_000
# A bitmap longer than this many bits is not decoded (a corrupt or hostile
# value must not make the relay allocate without bound): ten times the
# largest read window a pool may configure is ample.
MAX_SPAN_BITS = 1_000_000


def encode(position: int, finished: Collection[int]) -> str:
    """The metadata for a commit at `position` (next offset to read)."""
    ahead = sorted(o for o in finished if position < o <= position + MAX_SPAN_BITS)
    while ahead:
        text = _encode_bits(position, ahead)
        if len(text) <= METADATA_MAX_CHARS:
            return text
        ahead = ahead[: len(ahead) // 2]  # keep the lowest: the first to be re-read
    return ""


def decode(position: int, metadata: str | None) -> frozenset[int]:
    """The finished offsets past `position` that `metadata` names (none if it is
    not ours or cannot be read)."""
    if not metadata or not metadata.startswith(PREFIX):
        return frozenset()
    try:
        raw = base64.urlsafe_b64decode(metadata[len(PREFIX) :])
        bitmap = zlib.decompressobj().decompress(raw, MAX_SPAN_BITS // 8)
    except (binascii.Error, ValueError, zlib.error):
        return frozenset()
    base = position + 1
    return frozenset(
        base + byte_index * 8 + bit
        for byte_index, byte in enumerate(bitmap)
        if byte
        for bit in range(8)
        if byte >> bit & 1
    )


def _encode_bits(position: int, ahead: list[int]) -> str:
    base = position + 1
    bitmap = bytearray((ahead[-1] - base) // 8 + 1)
    for offset in ahead:
        i = offset - base
        bitmap[i // 8] |= 1 << (i % 8)
    packed = zlib.compress(bytes(bitmap), level=9)
    return PREFIX + base64.urlsafe_b64encode(packed).decode("ascii")
