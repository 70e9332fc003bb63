"""Pooled connections against a real receiver: an idle one is ended with QUIT on
a timer, although its destination is never wanted again, and counted by reason."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import pytest

from mailpipe.devstack.procs import free_port
from mailpipe.devstack.smtp_receiver import SessionEnd, SMTPReceiver

from .conftest import EGRESS, Pool, RelayProcess, wait_for

pytestmark = pytest.mark.relay

METRICS_HOST = "127.0.0.5"
IDLE_SECONDS = 1  # the destination's limit; the relay's timer ticks every second
# Generous for a loaded machine, and far below what the relay kept idle
# connections for before the timer (until the destination was next wanted).
QUIT_WAIT_SECONDS = 30


def closed_by(reason: str, port: int) -> float:
    """The relay's mailpipe_smtp_connections_closed_total for `reason` (0 if absent)."""
    try:
        with urllib.request.urlopen(f"http://{METRICS_HOST}:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    sample = f'mailpipe_smtp_connections_closed_total{{reason="{reason}"}} '
    for line in text.splitlines():
        if line.startswith(sample):
            return float(line[len(sample) :])
    return 0.0


def test_an_idle_connection_is_quit_within_its_limit_and_counted(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., RelayProcess],
) -> None:
    port = free_port(METRICS_HOST)
    rx, pool = routed_pool(
        throttles={"d.test": {"connection_idle_seconds": IDLE_SECONDS}},
        metrics_port=port,
        metrics_address=METRICS_HOST,
    )
    relay = relays(pool)
    pool.send("a@d.test", "b@d.test")
    pool.flush()
    wait_for(lambda: len(rx.recipients()) == 2, 60, "the message delivered", relay)

    def relay_ends() -> list[SessionEnd]:  # not the receiver's own start-up probe
        return [e for e in rx.session_ends() if e.peer == EGRESS.address]

    # Nothing more goes to d.test: only the relay's timer can end the connection.
    wait_for(lambda: relay_ends() != [], QUIT_WAIT_SECONDS, "the idle session ended", relay)
    [end] = relay_ends()
    assert end.quit, "the idle connection was dropped without QUIT"
    assert relay.alive()  # ended by the idle limit, not by the relay stopping
    wait_for(lambda: closed_by("idle", port) == 1, 30, "the close counted as idle", relay)
    assert rx.connections()[EGRESS.address] == 1
