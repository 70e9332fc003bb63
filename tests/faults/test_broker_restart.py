"""Fault: the Kafka broker stops in the middle of consumption, then returns.

While the broker is away the relay can neither read, produce its events nor
commit; what it had read it keeps delivering, and the acknowledgements wait.
When the broker is back the relay must reconnect on its own (no restart),
rejoin its group and finish: nothing lost, every recipient with exactly one
final disposition, and none delivered twice (ARCHITECTURE.md, "Nothing sent twice on a hand-over").

The mechanism that used to send mail twice (30 to 100 of 600, the whole
read window): the relay keeps delivering what it had read while no commit
can be made; when the broker is back the group has dropped the relay
(UnknownMemberIdError on its first commit), its partitions are revoked
and re-read from the last stored commit, and everything delivered since
went out again, including attempts still running at the eviction. Now the
relay remembers the offsets it finished (across the eviction, even those
whose attempt completes after it), skips them when they are read again,
and a re-read copy of a record whose attempt is still running waits for
it (`offsets`, `handover`; unit tests in
tests/relay/unit/test_rebalance_handover.py). The bound is 0 because one
relay owns every partition here. With several relays, a partition evicted
from one and given to another while the broker was away is re-sent for
what the first finished after its last stored commit: no commit, and so no
metadata, can reach the new owner while the broker is down.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.devstack.stack import Stack
from tests.conftest import wait_for
from tests.relay.integration.conftest import MX_HOST, Pool, RelayProcess

from .conftest import count

pytestmark = [pytest.mark.faults, pytest.mark.relay]

OUTAGE_LIMIT_SECONDS = 180  # a commit's own bound (30 s) and more, on a loaded machine
BROKER_LOST = "Connection lost"  # kafka-python's log line for a broker that went away
COMMIT_FAILED = "commit failed"  # the relay's engine, when a commit could not be made
# the engine, when its read window is full and nothing can be committed: the other
# sign that acknowledgements wait (no commit is even tried while none finished)
NO_COMMIT_PROGRESS = "no commit progress"
WINDOW = 100  # a small read window, so most records are still unread when the broker goes
TOTAL = 600
DOMAINS = [f"b{i}.test" for i in range(4)]
REPLY_DELAY_SECONDS = 0.01  # a realistic MX, so consumption spans the outage


def test_broker_stopped_30s_and_restarted_loses_nothing(
    pool_factory: Callable[..., Pool],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
    relays: Callable[..., RelayProcess],
    broken_stack: Stack,
) -> None:
    rx = smtp_receiver(MX_HOST, 0)
    rx.policy.reply_delay_seconds = REPLY_DELAY_SECONDS
    pool = pool_factory(
        routes={d: [{"host": rx.host, "port": rx.port}] for d in DOMAINS},
        kafka={"max_in_flight_records": WINDOW},
    )
    sent = [f"u{i}@{DOMAINS[i % len(DOMAINS)]}" for i in range(TOTAL)]
    for rcpt in sent:
        pool.send(rcpt)
    pool.flush()

    pool.close()  # an idle producer would only reconnect through the outage

    relay = relays(pool)
    wait_for(lambda: len(rx.recipients()) >= TOTAL // 6, 60, "deliveries under way", relay)
    broken_stack.stop_component("kafka")
    at_stop = len(rx.recipients())
    # The broker stays away until the relay has lost it and a commit has failed:
    # deliveries of what it had read went on, acknowledgements and commits wait,
    # the state the restart must recover from (a fixed 30 s guessed at it).
    logged = relay.log.stat().st_size

    def commit_failed() -> bool:
        since = relay.log.read_text(errors="replace")[logged:]
        return BROKER_LOST in since and (COMMIT_FAILED in since or NO_COMMIT_PROGRESS in since)

    wait_for(
        commit_failed, OUTAGE_LIMIT_SECONDS, "commits failing or stalled, the broker away", relay
    )
    assert relay.alive(), relay.log_tail()
    broken_stack.start_component("kafka")

    def done() -> bool:
        t = count(pool, sent, rx.recipients())
        return t.lost == 0 and t.stalled == 0

    wait_for(done, 120, "every recipient delivered with a final disposition", relay)
    t = count(pool, sent, rx.recipients())
    print(f"broker restart: {t} (delivered before the stop: {at_stop})")
    assert at_stop < TOTAL, "everything was delivered before the broker stopped"
    assert (t.lost, t.stalled) == (0, 0), t
    assert (t.duplicated, t.finals_twice) == (0, 0), t
