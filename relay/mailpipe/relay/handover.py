"""Handing partitions over in a rebalance without sending a record twice.

A record may reach a second relay (or this one again) when its partition
moves: through the commit, which stops at the lowest unfinished offset
(`offsets` remembers what finished past it), and through work still running
when the partition moves. This module is about the second. Every step of a
record that has effects outside the relay (an SMTP attempt, a postpone to a
delay topic, a DLQ copy) runs inside `Handover.run`, which

- holds the step back while its partition is *fenced*: a rebalance started
  (`ports.Revoking`) and the partition may move; the fence lifts when the
  new assignment is known (`ports.Assigned`), and a step of a partition
  that went elsewhere then does not run at all (the new owner reads it);
- counts steps running per partition, so the engine can wait until the
  revoked partitions' running work is finished (`drained`, at most
  DRAIN_SECONDS) before it answers with what to commit;
- never runs two copies of one record at once: a record read again (its
  partition came back, or the relay was evicted from its group while the
  broker was away) waits for the earlier copy's step to end; the caller
  then finds it finished (`OffsetTracker.finished_before`) and skips it.

What stays: a step still running after DRAIN_SECONDS, on a partition that
moves, is also started by the new owner (an SMTP transaction that outlives
the drain: the RFC 1047 window; ARCHITECTURE.md, "Nothing sent twice on a hand-over").

Why the new owner does not look the records up on the events topic instead
(each final disposition is an event there): the events topic is keyed by
campaign, not by source partition, so finding a partition's records means
reading every event partition back to the oldest uncommitted record (after
a broker outage, all of the pool's traffic for as long as the outage
lasted); and an event is written only once the old owner's transaction is
over, so a lookup made while that transaction runs finds nothing: the window
left here would remain. The commit's metadata answers the same question in
one read of a few hundred bytes.

Only the event loop uses it; no IO.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from .ports import TopicPartition

# How long a rebalance waits for work running on revoked partitions. An SMTP
# transaction to a healthy MX takes well under a second, a slow one a few;
# the whole group waits for the slowest member's answer (kafka-python holds
# the rejoin until it comes), so this bounds what one tarpit costs the pool.
DRAIN_SECONDS = 10.0


class Handover:
    def __init__(self) -> None:
        self._fenced: set[TopicPartition] = set()
        self._lifted = asyncio.Event()
        self._lifted.set()
        self._running: dict[tuple[TopicPartition, int], asyncio.Event] = {}
        self._active: Counter[TopicPartition] = Counter()
        self._left = asyncio.Event()  # set whenever a step ends (drain waits on it)
        self.stopping = False

    # -- rebalance notices ----------------------------------------------------------

    def fence(self, tps: Collection[TopicPartition]) -> None:
        """A rebalance started: steps of `tps` not yet running wait."""
        self._fenced.update(tps)
        if self._fenced:
            self._lifted.clear()

    def lift(self) -> None:
        """The rebalance ended (or the relay stops): waiting steps look again."""
        self._fenced.clear()
        self._lifted.set()

    def stop(self) -> None:
        """Shutdown: waiting steps give up (their records stay unfinished)."""
        self.stopping = True
        self.lift()

    async def drained(self, tps: Collection[TopicPartition], seconds: float) -> bool:
        """Wait until no step of `tps` runs, at most `seconds`; True if none does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.active(tps):
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._left.clear()
            try:
                await asyncio.wait_for(self._left.wait(), timeout=left)
            except TimeoutError:
                return not self.active(tps)
        return True

    def active(self, tps: Collection[TopicPartition]) -> int:
        return sum(self._active[tp] for tp in tps)

    def describe(self) -> dict[str, Any]:
        return {
            "fenced": sorted(f"{t}/{p}" for t, p in self._fenced),
            "running": sum(self._active.values()),
        }

    # -- steps ------------------------------------------------------------------------

    async def run(
        self,
        tp: TopicPartition,
        offset: int,
        step: Coroutine[Any, Any, None],
        still_wanted: Callable[[], bool],
    ) -> None:
        """Run `step` for record (`tp`, `offset`) once it may: not fenced, no other
        copy of the record running, and `still_wanted()` (the caller's check,
        made last: its partition still ours, the record not finished meanwhile).
        Otherwise `step` is closed without running."""
        key = (tp, offset)
        while not self.stopping:
            if tp in self._fenced:
                await self._lifted.wait()
                continue
            other = self._running.get(key)
            if other is not None:
                await other.wait()
                continue
            break
        if self.stopping or not still_wanted():
            step.close()
            return
        ended = self._running[key] = asyncio.Event()
        self._active[tp] += 1
        try:
            await step
        finally:
            del self._running[key]
            ended.set()
            self._active[tp] -= 1
            if self._active[tp] <= 0:
                del self._active[tp]
            self._left.set()
