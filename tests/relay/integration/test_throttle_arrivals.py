"""A domain's rate limit holds for what *arrives* at its MX, whatever the connection set-up costs.

Receivers (Gmail, Yahoo) count the transactions that reach them; a relay that
takes its rate token before the connection is ready (connect, a slow
greeting, EHLO, STARTTLS) spends the tokens of the connections it opens only
when they are greeted, bunched with the tokens of connections already open:
up to `max_connections` messages over the limit in one window. Here a real
relay process delivers to a receiver that greets late and the receiver's own
MAIL FROM arrival times are checked against every sliding window.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import pytest

from mailpipe.devstack.smtp_receiver import SMTPReceiver

from .conftest import Pool, RelayProcess, wait_for

pytestmark = pytest.mark.relay

# 2 messages a second (the config's rate is per minute, any float): the test
# takes seconds, not minutes, and the windows scale with the interval.
PER_MINUTE = 120.0
WINDOW_SECONDS = 5.0
LIMIT_PER_WINDOW = int(PER_MINUTE * WINDOW_SECONDS / 60)  # 10
# Arrival times are the receiver's: loopback and two busy event loops move a
# send by a few milliseconds, a loaded machine by more. Each window is checked
# this much shorter; a bunched token costs a whole interval (0.5 s) or more.
JITTER_SECONDS = 0.25  # half an interval
GREETING_SECONDS = 2.0  # four intervals: set-up that a token taken early would span
CONNECTIONS = 5
PER_CONNECTION = 6  # connections are reopened during the run: each reopening greets late again
RECORDS = 40


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of `times` in any half-open window [t, t + window)."""
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_most_in_any_window_counts_half_open_windows() -> None:
    assert most_in_any_window([0.0, 0.5, 1.0, 1.5], 1.0) == 2
    assert most_in_any_window([0.0, 0.1, 0.2, 5.0], 1.0) == 3
    assert most_in_any_window([], 1.0) == 0


def test_arrivals_never_exceed_the_rate_when_greetings_are_slow(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., RelayProcess],
) -> None:
    rx, pool = routed_pool(
        "slowgreet.test",
        throttles={
            "slowgreet.test": {
                "messages_per_minute": PER_MINUTE,
                "max_connections": CONNECTIONS,
                "messages_per_connection": PER_CONNECTION,
            }
        },
    )
    rx.policy.greeting_delay_seconds = GREETING_SECONDS
    for i in range(RECORDS):
        pool.send(f"u{i}@slowgreet.test", partition=0)
    pool.flush()
    relay = relays(pool)
    started = time.time()
    expected = RECORDS * 60 / PER_MINUTE  # 20 s at the limit
    wait_for(lambda: len(rx.recipients()) >= RECORDS, expected * 3 + 60, "all delivered", relay)

    arrivals = rx.mail_times()
    assert len(arrivals) == RECORDS, len(arrivals)  # one transaction each: nothing retried
    most = most_in_any_window(arrivals, WINDOW_SECONDS - JITTER_SECONDS)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(arrivals)]
    assert most <= LIMIT_PER_WINDOW, (most, gaps, round(arrivals[-1] - started, 1))
    assert sum(rx.connections().values()) > 1  # several connections were greeted late
