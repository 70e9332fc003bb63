"""The read window: how far the relay reads ahead, what it commits, relief when stuck.

The window counts records read but not yet covered by a commit, so a crash
re-sends at most `max_in_flight_records` (the bound on duplicates of ARCHITECTURE.md, "Nothing
lost"). Commits go up to the lowest unfinished offset per partition (`offsets`),
every COMMIT_INTERVAL_SECONDS, each with the offsets finished past it (for
whoever reads the partition next: ARCHITECTURE.md, "Nothing sent twice on a hand-over"). A window
that is full while commits stand still is pinned by records queued behind a slow domain: after
RELIEF_AFTER_SECONDS the engine moves that domain's queue to a delay topic
(ARCHITECTURE.md, "No head-of-line blocking"), and if the window stays stuck anyway it says why. A
full window also spends the tarpit budget every SPILL_CHECK_SECONDS, commits
moving or not (`stalls`: a domain stalling its attempts is cut).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mailpipe.contracts.config import RelayConfig

from .offsets import OffsetTracker
from .ports import Clock, RecordSource, TopicPartition
from .tasks import Tasks, task_stacks

log = logging.getLogger("mailpipe.relay.engine")

COMMIT_INTERVAL_SECONDS = 0.2  # frequent enough that the read window, not commits, limits speed
RELIEF_AFTER_SECONDS = 1.0  # a full window whose commits stood still this long is stuck
SPILL_CHECK_SECONDS = 1.0  # how often a full window looks for domains over their tarpit budget
STUCK_WARN_SECONDS = 10.0  # how long relief may fail before a warning, and how often it repeats


class CommitWindow:
    def __init__(self, source: RecordSource, tracker: OffsetTracker, clock: Clock) -> None:
        self.source = source
        self.tracker = tracker
        self.clock = clock
        self._last_commit: tuple[dict[TopicPartition, int], dict[TopicPartition, frozenset[int]]]
        self._last_commit = ({}, {})
        self._last_progress = 0.0  # last commit that moved, or the start
        self._last_relief = 0.0
        self._last_spill = 0.0
        self._last_stuck_warning = 0.0

    def reconfigure(self, config: RelayConfig) -> None:
        self.limit = config.kafka.max_in_flight_records

    @property
    def room(self) -> int:
        """Records that may still be read before the window is full."""
        return self.limit - self.tracker.uncommitted

    def open(self) -> None:
        """Start measuring progress: a fresh run has not been stuck yet."""
        self._last_progress = self._last_relief = self._last_spill = self.clock.monotonic()

    async def commit_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(COMMIT_INTERVAL_SECONDS)
            await self.commit()

    async def commit(self) -> None:
        offsets = self.tracker.committable()
        ahead = self.tracker.finished_ahead(offsets)
        if offsets and (offsets, ahead) != self._last_commit:
            try:
                await self.source.commit(offsets, ahead)
            except Exception as exc:  # the next commit carries everything this one did
                log.warning("commit failed: %s: %s", type(exc).__name__, exc)
                return
            self._last_commit = (offsets, ahead)
            self._last_progress = self.clock.monotonic()
            self.tracker.committed(offsets)

    def full(
        self,
        relieve: Callable[[], None],
        spill_stalled: Callable[[], None],
        describe: Callable[[], dict[str, Any]],
        tasks: Tasks,
    ) -> None:
        """Called while the window is full: spill stalled domains every
        SPILL_CHECK_SECONDS (a trickle of commits from other domains does not
        make a tarpit's hold on the window fair), relieve it once per stuck
        period, and warn every STUCK_WARN_SECONDS while relief does not help
        (something holds offsets that will never finish: say what)."""
        now = self.clock.monotonic()
        if now - self._last_spill > SPILL_CHECK_SECONDS:
            self._last_spill = now
            spill_stalled()
        stuck = now - self._last_progress
        if stuck > RELIEF_AFTER_SECONDS and now - self._last_relief > RELIEF_AFTER_SECONDS:
            # Relief is measured apart from progress: resetting progress here
            # would keep `stuck` below STUCK_WARN_SECONDS and the warning silent.
            self._last_relief = now
            relieve()
        if stuck < STUCK_WARN_SECONDS or now - self._last_stuck_warning < STUCK_WARN_SECONDS:
            return
        self._last_stuck_warning = now
        log.warning(
            "read window full, no commit progress for %.0f s: %s; tasks wait in %s",
            stuck,
            describe(),
            task_stacks(tasks.running),
        )
