"""Which offsets may be committed: the lowest unfinished one, per partition.

Records finish out of order (a fast domain overtakes a throttled one), but
Kafka only stores one position per partition. Committing the lowest offset
still in flight means a crash re-reads some finished records (duplicates,
bounded by the in-flight window) and never skips an unfinished one
(invariant 1). Only the event loop touches it (revocations arrive in-band),
so it needs no lock.
"""

from __future__ import annotations

import heapq
from collections import deque

from .ports import TopicPartition


class _Partition:
    __slots__ = ("done", "gen", "heap", "high", "read")

    def __init__(self, gen: int) -> None:
        self.gen = gen  # which ownership of the partition this is (see `revoke`)
        self.heap: list[int] = []  # unfinished offsets (lazy deletion via `done`)
        self.done: set[int] = set()
        self.high = -1  # highest offset seen
        self.read: deque[int] = deque()  # offsets read and not yet committed, in order


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _Partition] = {}
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

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """The broker stored these positions: forget the offsets below them."""
        for tp, position in offsets.items():
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
        part = self._parts.get(tp)
        if part is None or part.gen != gen or offset in part.done:
            # Revoked meanwhile (perhaps assigned back since: a new
            # generation whose copy of this record is tracked anew), or
            # finished twice.
            return
        part.done.add(offset)
        self._in_flight -= 1
        while part.heap and part.heap[0] in part.done:
            part.done.discard(heapq.heappop(part.heap))

    def committable(self) -> dict[TopicPartition, int]:
        """Next offset to read per partition: Kafka's commit convention."""
        out = {}
        for tp, part in self._parts.items():
            if part.high < 0:
                continue
            out[tp] = part.heap[0] if part.heap else part.high + 1
        return out

    def revoke(self, tps: list[TopicPartition]) -> int:
        """Forget partitions this relay no longer owns; returns records dropped."""
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
            }
            for tp, part in self._parts.items()
        }

    def owns(self, tp: TopicPartition) -> bool:
        return tp in self._parts
