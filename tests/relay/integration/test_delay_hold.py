"""A record held in memory for the last stretch of its delay, against real Kafka:
a relay restarted mid-wait loses nothing, sends nothing early, and sends it once."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.relay.delays import DUE_SLACK_SECONDS

from .conftest import Pool, RelayProcess, relay_state, wait_for

pytestmark = pytest.mark.relay

DUE_IN_SECONDS = 20  # with delay steps 1s and 1m: one hop to the 1 s topic, then held


def held(relay: RelayProcess) -> int:
    state = relay_state(relay) or {}
    return int(state.get("held", 0))


def test_a_held_record_survives_a_relay_restart_and_is_sent_once_not_early(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., RelayProcess],
) -> None:
    rx, pool = routed_pool()
    first = relays(pool, "relay-1")
    pool.send("ready@d.test")
    pool.flush()
    wait_for(lambda: rx.recipients() == ["ready@d.test"], 60, "the relay running", first)

    due = time.time() + DUE_IN_SECONDS
    pool.send("held@d.test", not_before=due)
    pool.flush()
    wait_for(lambda: held(first) == 1, DUE_IN_SECONDS / 2, "the record held in memory", first)
    first.stop()  # a clean restart, mid-wait: the held record is not committed
    assert "held@d.test" not in rx.recipients()

    second = relays(pool, "relay-2")
    wait_for(lambda: "held@d.test" in rx.recipients(), 90, "the held record delivered", second)
    pool.send("after@d.test")  # a record behind it, so "once" is checked after a later one
    pool.flush()
    wait_for(lambda: "after@d.test" in rx.recipients(), 60, "the record after", second)
    [message] = [m for m in rx.messages() if "held@d.test" in m.rcpt_tos]
    assert message.time >= due - DUE_SLACK_SECONDS  # not before it was due
    assert rx.recipients().count("held@d.test") == 1
    delay_1s = pool.config.kafka.delay_topics["1s"]
    assert len(pool.read(delay_1s)) <= 2  # one hop, and at most one more after the restart
