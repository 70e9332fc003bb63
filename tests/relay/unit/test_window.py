"""The commit window: relief once per stuck period, and a warning that does fire
while relief does not help (it used to be silenced by the relief itself)."""

from __future__ import annotations

import logging

import pytest

from mailpipe.relay.clock import ManualClock
from mailpipe.relay.fakes import MemorySource
from mailpipe.relay.offsets import OffsetTracker
from mailpipe.relay.ports import TopicPartition
from mailpipe.relay.tasks import Tasks
from mailpipe.relay.window import RELIEF_AFTER_SECONDS, STUCK_WARN_SECONDS, CommitWindow

from .conftest import make_config

TICK = 0.05  # the engine's POLL_IDLE_SECONDS: how often a full window is looked at


async def test_relief_once_per_stuck_period_and_a_warning_while_stuck(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    tracker = OffsetTracker()
    window = CommitWindow(MemorySource(), tracker, clock)
    window.reconfigure(
        make_config(kafka={**make_config().kafka.model_dump(), "max_in_flight_records": 1})
    )
    tracker.start(TopicPartition("t", 0), 0)  # never finishes: the window stays full
    window.open()
    assert window.room == 0
    reliefs: list[float] = []
    with caplog.at_level(logging.WARNING, logger="mailpipe.relay.engine"):
        while clock.monotonic() < STUCK_WARN_SECONDS + 1:
            clock.advance(TICK)
            window.full(lambda: reliefs.append(clock.monotonic()), lambda: None, dict, Tasks())
    expected = int((STUCK_WARN_SECONDS + 1) / RELIEF_AFTER_SECONDS)
    assert expected - 1 <= len(reliefs) <= expected
    assert [r.message for r in caplog.records if "read window full" in r.message]
