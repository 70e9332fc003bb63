"""Which offsets may be committed, and which were finished past the commit.

Records finish out of order (a fast domain overtakes a throttled one), but
Kafka only stores one position per partition. Committing the lowest offset
still in flight means the commit never skips an unfinished record
(ARCHITECTURE.md, "Nothing lost"). The records finished *past* that position are the ones a
re-read would send again, so the tracker also remembers them ("finished
ahead"), per partition and across ownerships:

- every finish is remembered, even one that completes after its partition
  was revoked (an attempt running when the group took the partition away):
  it was delivered all the same;
- a record read again (the partition came back after a rebalance or after
  the relay was evicted during a broker outage) whose offset is remembered is
  not attempted again: `finished_before` says so and the engine finishes it
  at once, so the next commit covers it;
- the commit carries the finished-ahead offsets to the next owner in the
  commit's metadata (`kafka.metadata`), which `learn` takes back in;
- a commit the broker stored forgets what it covers.

Memory is bounded: finished-ahead offsets lie within the read window above
the commit, and `learn` drops a partition's memory when the group's position
went back below one this relay stored (a reset, a recreated topic): offsets
there are not the same records any more, and skipping them would lose mail.

Only the event loop touches it (revocations arrive in-band), so it needs no
lock.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Collection, Mapping

from .ports import TopicPartition


class _Partition:
    __slots__ = ("done", "gen", "heap", "high", "read")

    def __init__(self, gen: int) -> None:
        self.gen = gen  # which ownership of the partition this is (see `revoke`)
        self.heap: list[int] = []  # unfinished offsets (lazy deletion via `done`)
        self.done: set[int] = set()
        self.high = -1  # highest offset seen
        self.read: deque[int] = deque()  # offsets read and not yet committed, in order


class _Memory:
    """Offsets of one partition finished by anyone we know of, at or past `floor`
    (the highest position known committed); kept across ownerships."""

    __slots__ = ("finished", "floor")

    def __init__(self) -> None:
        self.floor = -1
        self.finished: set[int] = set()

    def forget_below(self, position: int) -> None:
        if position > self.floor:
            self.floor = position
            self.finished = {o for o in self.finished if o >= position}


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _Partition] = {}
        self._memory: dict[TopicPartition, _Memory] = {}
        self._in_flight = 0
        self._uncommitted = 0
        self._gens = 0

    @property
    def in_flight(self) -> int:
        """Records read and not finished."""
        return self._in_flight

    @property
    def uncommitted(self) -> int:
        """Records read and not yet covered by a commit: what a crash would re-read.
        The engine reads no more while this is at its window, which bounds duplicates."""
        return self._uncommitted

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """The broker stored these positions: forget the offsets below them."""
        for tp, position in offsets.items():
            memory = self._memory.get(tp)
            if memory is not None:
                memory.forget_below(position)
            part = self._parts.get(tp)
            if part is None:
                continue
            while part.read and part.read[0] < position:
                part.read.popleft()
                self._uncommitted -= 1

    def start(self, tp: TopicPartition, offset: int) -> int:
        """Track a record read; returns the ownership generation to finish it with."""
        part = self._parts.get(tp)
        if part is None:
            self._gens += 1
            part = self._parts[tp] = _Partition(self._gens)
        heapq.heappush(part.heap, offset)
        part.read.append(offset)
        part.high = max(part.high, offset)
        self._in_flight += 1
        self._uncommitted += 1
        return part.gen

    def finish(self, tp: TopicPartition, offset: int, gen: int) -> None:
        memory = self._memory.get(tp)
        if memory is None:
            memory = self._memory[tp] = _Memory()
        if offset >= memory.floor:
            # Whichever ownership finished it: its disposition is acknowledged.
            memory.finished.add(offset)
        part = self._parts.get(tp)
        if part is None or part.gen != gen or offset in part.done:
            # Revoked meanwhile (perhaps assigned back since: a new
            # generation whose copy of this record is tracked anew and will
            # be skipped, see `finished_before`), or finished twice.
            return
        part.done.add(offset)
        self._in_flight -= 1
        while part.heap and part.heap[0] in part.done:
            part.done.discard(heapq.heappop(part.heap))

    def finished_before(self, tp: TopicPartition, offset: int) -> bool:
        """This offset was finished already (by an earlier ownership, ours or, as
        the commit metadata said, another relay's): not to be attempted again."""
        memory = self._memory.get(tp)
        return memory is not None and offset in memory.finished

    def committable(self) -> dict[TopicPartition, int]:
        """Next offset to read per partition: Kafka's commit convention."""
        out = {}
        for tp, part in self._parts.items():
            if part.high < 0:
                continue
            out[tp] = part.heap[0] if part.heap else part.high + 1
        return out

    def finished_ahead(
        self, positions: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, frozenset[int]]:
        """Per partition, the offsets past `positions` already finished: what the
        next owner must not send again (carried in the commit's metadata)."""
        out = {}
        for tp, position in positions.items():
            memory = self._memory.get(tp)
            if memory is not None:
                ahead = frozenset(o for o in memory.finished if o > position)
                if ahead:
                    out[tp] = ahead
        return out

    def learn(self, tp: TopicPartition, committed: int | None, finished: Collection[int]) -> None:
        """A partition assigned to us: the group's committed position (None: the
        group has none) and the offsets past it another owner finished (from
        the commit's metadata).

        A position below one we stored (a reset), or none where we stored one
        (a recreated topic), means the offsets we remember may name other
        records now: forget them rather than skip mail. None where we never
        stored one is the broker-outage case (the relay evicted before its
        first commit got through): what we finished stands."""
        memory = self._memory.get(tp)
        went_back = memory is not None and (committed is None or committed < memory.floor)
        if memory is not None and memory.floor >= 0 and went_back:
            memory = None
            del self._memory[tp]
        if committed is None:
            return
        if memory is None:
            memory = self._memory[tp] = _Memory()
        memory.forget_below(committed)
        memory.finished.update(o for o in finished if o > committed)

    def current(self, tp: TopicPartition, gen: int) -> bool:
        """`gen` is still this relay's ownership of `tp` (not revoked since)."""
        part = self._parts.get(tp)
        return part is not None and part.gen == gen

    def revoke(self, tps: Collection[TopicPartition]) -> int:
        """Forget partitions this relay no longer owns (their finished offsets stay
        remembered); returns records dropped."""
        dropped = 0
        for tp in tps:
            part = self._parts.pop(tp, None)
            if part is not None:
                n = len(part.heap) - len(part.done)
                dropped += n
                self._in_flight -= n
                self._uncommitted -= len(part.read)
        return dropped

    def describe(self) -> dict[str, dict[str, int]]:
        """Per partition: records read-uncommitted, unfinished, lowest unfinished,
        highest read (for the stuck-window warning)."""
        return {
            f"{tp.topic}/{tp.partition}": {
                "uncommitted": len(part.read),
                "unfinished": len(part.heap) - len(part.done),
                "lowest_unfinished": part.heap[0] if part.heap else -1,
                "high": part.high,
                "finished_ahead": len(self._memory[tp].finished) if tp in self._memory else 0,
            }
            for tp, part in self._parts.items()
        }

    def owns(self, tp: TopicPartition) -> bool:
        return tp in self._parts
