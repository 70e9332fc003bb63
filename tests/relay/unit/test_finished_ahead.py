"""Finished-ahead offsets: what a relay finished past its commit is never sent again.

Two pure pieces (issue 10, "a message sent twice is a defect as serious as a
lost one"):

- the commit metadata codec (`kafka.metadata`): the offsets finished past a
  commit travel with it to the partition's next owner; whatever does not fit
  is left out (sent again: a duplicate, never a loss), and metadata that is
  not ours decodes to nothing;
- the offset tracker's memory (`offsets.OffsetTracker`): a finish is
  remembered across ownerships, even one completing after its partition was
  revoked (the broker-outage case: the relay is evicted while its attempts
  run, then re-reads its partitions from the last commit), and forgotten
  when the group's position goes back (a reset or a recreated topic, where
  offsets name other records).
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from mailpipe.relay.kafka import metadata
from mailpipe.relay.offsets import OffsetTracker
from mailpipe.relay.ports import TopicPartition

TP = TopicPartition("p.outbound", 0)


@given(
    position=st.integers(min_value=0, max_value=2**40),
    gaps=st.sets(st.integers(min_value=1, max_value=5_000), max_size=2_000),
)
def test_metadata_round_trips_the_finished_offsets_past_the_commit(
    position: int, gaps: set[int]
) -> None:
    finished = {position + g for g in gaps}
    text = metadata.encode(position, finished | {position - 1, position})  # below: ignored
    assert len(text) <= metadata.METADATA_MAX_CHARS
    assert metadata.decode(position, text) == frozenset(finished)


def test_a_window_of_finished_offsets_fits_the_brokers_metadata_limit() -> None:
    """The default read window (2,000) at its worst (every other record finished)."""
    finished = set(range(101, 4_101, 2))
    text = metadata.encode(100, finished)
    assert len(text) < 1_000  # far under offset.metadata.max.bytes (4,096)
    assert metadata.decode(100, text) == finished


def test_what_does_not_fit_is_left_out_from_the_top() -> None:
    """Incompressible: random offsets over a wide span. Only the lowest are
    kept, and nothing is named that was not finished."""
    rng = random.Random(10)
    finished = set(rng.sample(range(1, 400_000), 50_000))
    text = metadata.encode(0, finished)
    assert len(text) <= metadata.METADATA_MAX_CHARS
    kept = metadata.decode(0, text)
    assert kept and kept <= finished
    assert max(kept) < min(finished - kept)


def test_metadata_that_is_not_ours_names_nothing() -> None:
    for foreign in (None, "", "some other client", "mp1:***", "mp1:" + "A" * 40):
        assert metadata.decode(7, foreign) == frozenset()


def test_hostile_metadata_cannot_make_a_huge_bitmap() -> None:
    import base64
    import zlib

    bomb = metadata.PREFIX + base64.urlsafe_b64encode(zlib.compress(b"\xff" * 10**7)).decode()
    assert len(metadata.decode(0, bomb)) <= metadata.MAX_SPAN_BITS


def test_a_finish_after_the_partition_was_lost_is_remembered_and_its_copy_skipped() -> None:
    """The broker-outage case: offsets 0-4 delivered while commits failed, the
    relay evicted with offset 3 still in SMTP, then the partition re-read from
    the last commit (0). Before: every one of them sent again."""
    t = OffsetTracker()
    old = 0
    for o in range(5):
        old = t.start(TP, o)
    for o in (0, 1, 2, 4):
        t.finish(TP, o, old)
    t.revoke([TP])  # evicted: nothing committed
    t.finish(TP, 3, old)  # the attempt running meanwhile completes
    t.learn(TP, 0, frozenset())  # assigned back; the group's position is still 0
    assert all(t.finished_before(TP, o) for o in range(5))
    for o in range(5):
        t.finish(TP, o, t.start(TP, o))  # what the engine does with a record finished before
    assert t.committable() == {TP: 5}  # and the first commit covers them
    assert t.in_flight == 0


def test_a_relay_evicted_before_its_first_commit_still_skips_what_it_finished() -> None:
    """The broker stopped right after the relay started: no commit was ever
    stored, so the group has no position when it gives the partition back.
    Before: that was taken for a recreated topic and the memory dropped
    (10 of 600 sent twice in the broker fault test)."""
    t = OffsetTracker()
    gen = 0
    for o in range(3):
        gen = t.start(TP, o)
        t.finish(TP, o, gen)
    t.revoke([TP])
    t.learn(TP, None, frozenset())
    assert all(t.finished_before(TP, o) for o in range(3))


def test_the_finished_ahead_offsets_are_what_lies_past_the_commit() -> None:
    t = OffsetTracker()
    gen = 0
    for o in range(10, 20):
        gen = t.start(TP, o)
    for o in (11, 12, 15, 19):
        t.finish(TP, o, gen)
    position = t.committable()
    assert position == {TP: 10}
    assert t.finished_ahead(position) == {TP: frozenset({11, 12, 15, 19})}
    t.finish(TP, 10, gen)
    position = t.committable()
    assert position == {TP: 13}
    assert t.finished_ahead(position) == {TP: frozenset({15, 19})}
    t.committed(position)  # the broker stored it: what lies below is forgotten
    assert not t.finished_before(TP, 11)
    assert t.finished_before(TP, 15)


def test_the_next_owner_learns_the_previous_owners_finished_offsets() -> None:
    t = OffsetTracker()
    t.learn(TP, 100, frozenset({99, 102, 103}))  # 99: below the commit, meaningless
    assert [o for o in range(98, 106) if t.finished_before(TP, o)] == [102, 103]


def test_memory_is_forgotten_when_the_groups_position_went_back() -> None:
    """A reset to an earlier offset, or a topic deleted and created again
    (no commit at all): the remembered offsets name other records now;
    skipping them would lose mail."""
    t = OffsetTracker()
    gen = t.start(TP, 50)
    t.finish(TP, 50, gen)
    t.committed({TP: 40})
    t.revoke([TP])
    t.learn(TP, 10, frozenset())  # went back below what we knew committed
    assert not t.finished_before(TP, 50)

    gen = t.start(TP, 60)
    t.finish(TP, 60, gen)
    t.revoke([TP])
    t.learn(TP, None, frozenset())  # no commit: a new topic of the same name
    assert not t.finished_before(TP, 60)
