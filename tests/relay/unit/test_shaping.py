from __future__ import annotations

import asyncio

import pytest

from mailpipe.relay.offsets import OffsetTracker
from mailpipe.relay.ports import Envelope, TopicPartition, TransactionResult
from mailpipe.relay.throttle import TokenBucket

from .conftest import Harness, make_config, record_bytes


def test_token_bucket_spaces_sends_at_the_rate() -> None:
    bucket = TokenBucket(60, now=0.0)
    assert bucket.take(0.0) == 0.0  # taken
    assert bucket.take(0.0) == 1.0  # not taken: free in 1 s, ask again then
    assert bucket.take(0.5) == 0.5
    assert bucket.take(1.3) == 0.0  # a waiter waking late takes it late ...
    assert bucket.take(2.0) == pytest.approx(0.3)  # ... and the next an interval after that
    assert bucket.take(10.0) == 0.0
    assert bucket.take(10.0) == 1.0  # idle time does not bank a burst


def test_offsets_commit_lowest_unfinished() -> None:
    t = OffsetTracker()
    tp = TopicPartition("t", 0)
    gen = 0
    for o in range(5):
        gen = t.start(tp, o)
    for o in (1, 2, 4):
        t.finish(tp, o, gen)
    assert t.committable() == {tp: 0}
    t.finish(tp, 0, gen)
    assert t.committable() == {tp: 3}
    t.finish(tp, 3, gen)
    assert t.committable() == {tp: 5}
    assert t.in_flight == 0


def test_uncommitted_window_shrinks_only_on_commit() -> None:
    t = OffsetTracker()
    tp = TopicPartition("t", 0)
    for o in range(4):
        t.finish(tp, o, t.start(tp, o))
    assert (t.in_flight, t.uncommitted) == (0, 4)
    t.committed({tp: 3})
    assert t.uncommitted == 1
    t.committed(t.committable())
    assert t.uncommitted == 0


def test_a_finish_from_before_a_revoke_does_not_touch_the_new_ownership() -> None:
    t = OffsetTracker()
    tp = TopicPartition("t", 0)
    old = t.start(tp, 7)
    t.revoke([tp])
    new = t.start(tp, 7)  # assigned back and the record re-read
    t.finish(tp, 7, old)  # the old attempt completes late
    assert t.committable() == {tp: 7}  # still unfinished in this ownership
    t.finish(tp, 7, new)
    assert t.committable() == {tp: 8}


async def test_lanes_never_hold_more_connections_than_the_shaping_key_allows() -> None:
    """Connection slots are counted per shaping key: two domains of one group
    share the group's slots (scheduling.py is where they are taken)."""
    h = Harness(
        make_config(
            domain_groups={"big": ["*.big.test"]},
            throttles={"big": {"max_connections": 2}},
        )
    )
    busy = peak = 0
    deliver = h.transport.deliver

    async def counting(envelope: Envelope) -> TransactionResult:
        nonlocal busy, peak
        grouped = envelope.domain.endswith(".big.test")
        busy += grouped
        peak = max(peak, busy)
        try:
            await asyncio.sleep(0.01)
            return await deliver(envelope)
        finally:
            busy -= grouped

    h.transport.deliver = counting  # type: ignore[method-assign]
    for i in range(6):
        h.put(record_bytes(f"u{i}@a.big.test"))
        h.put(record_bytes(f"u{i}@b.big.test"))
        h.put(record_bytes(f"u{i}@other.test"))
    await h.run_until(lambda: len(h.events()) == 18)
    assert peak == 2  # the group's two slots, shared by its two domains
    assert sum(e.domain == "other.test" for e in h.transport.envelopes) == 6
