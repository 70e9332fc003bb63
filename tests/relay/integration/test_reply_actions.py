"""A reply rule suspends a site for one egress IP pool-wide and lifts it on time
(issue 21), with real Kafka and two real relays of one pool.

The receiver answers MAIL FROM from 127.0.0.2 with Gmail's `421 4.7.28`
until the suspension should end, and accepts everything else. The pool's own
rule (the defaults' Gmail rule, with a suspension short enough for a test)
suspends the site for that IP. Records of the site are keyed by it (as the
fan-out keys them) on partitions the two relays own apart, so both relays
send to it: neither may try 127.0.0.2 during the suspension (each relay
alternates its two warm IPs, so one that did not hold it would), while
127.0.0.3 keeps delivering; after the suspension both use 127.0.0.2 again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from mailpipe.contracts.config import RetrySettings
from mailpipe.devstack import samples
from mailpipe.devstack.smtp_receiver import SMTPReceiver

from .conftest import Pool, RelayProcess, relay_state, wait_for
from .test_shaping import _members

pytestmark = pytest.mark.relay

SITE = "g.test"
BLOCKED, OTHER = "127.0.0.2", "127.0.0.3"
SUSPEND_SECONDS = 30  # long enough for both relays to send during it on a busy machine
GMAIL_421 = (
    "421 4.7.28 [127.0.0.2] Our system has detected an unusual rate of unsolicited mail"
    " originating from your IP address. To protect our users from spam, mail sent from your"
    " IP address has been temporarily rate limited. - gsmtp"
)
# A relay holds the suspension from when it read the reply (just after the
# receiver sent it): records due this long after the receiver's end find it over.
LIFT_MARGIN_SECONDS = 2
# The two relays' partitions (range assignor, 4 partitions): 0-1 and 2-3.
PARTITIONS = (0, 2)


class GmailLimit:
    """The receiver's MAIL FROM answers: 421 4.7.28 to BLOCKED until SUSPEND_SECONDS
    after the first one, 250 otherwise; every MAIL FROM kept as (peer, time, code)."""

    def __init__(self, rx: SMTPReceiver) -> None:
        self.lock = threading.Lock()
        self.first_421: float | None = None
        self.mails: list[tuple[str, float, int]] = []
        self._accept = rx.handler.handle_MAIL
        rx.handler.handle_MAIL = self.handle_MAIL  # type: ignore[method-assign]

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        peer, now = str(session.peer[0]), time.time()
        with self.lock:
            if peer == BLOCKED and (self.first_421 is None or now < self.lifted_at):
                self.first_421 = self.first_421 or now
                self.mails.append((peer, now, 421))
                return GMAIL_421
            self.mails.append((peer, now, 250))
        return str(await self._accept(server, session, envelope, address, options))

    @property
    def lifted_at(self) -> float:
        assert self.first_421 is not None
        return self.first_421 + SUSPEND_SECONDS

    def from_blocked(self, since: float) -> list[tuple[str, float, int]]:
        with self.lock:
            return [m for m in self.mails if m[0] == BLOCKED and m[1] >= since]


def _send(
    pool: Pool,
    prefix: str,
    per_partition: int,
    partitions: tuple[int, ...] = PARTITIONS,
    **fields: Any,
) -> dict[int, set[str]]:
    """`per_partition` records to the site on each of `partitions`, keyed by the site."""
    sent: dict[int, set[str]] = {}
    for partition in partitions:
        for i in range(per_partition):
            rcpt = f"{prefix}{partition}-{i}@{SITE}"
            pool.send(rcpt, id=rcpt, partition=partition, key=SITE, **fields)
            sent.setdefault(partition, set()).add(rcpt)
    pool.flush()
    return sent


def _holds(relay: RelayProcess) -> bool:
    state = relay_state(relay)
    return state is not None and any(
        (a["site"], a["ip"], a["action"]) == (SITE, BLOCKED, "suspend")
        for a in state.get("site_actions", [])
    )


def test_a_gmail_421_suspends_the_site_for_one_ip_on_both_relays_and_lifts_on_time(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
) -> None:
    rx = smtp_receiver("127.0.0.10", 0)
    gmail = GmailLimit(rx)
    rule = {
        "bounceClass": "rate_limited",
        "codes": ["421"],
        "enhanced": ["4.7.28"],
        "action": {"kind": "suspend", "durationSeconds": SUSPEND_SECONDS},
        "description": "the defaults' Gmail 4.7.28 rule, suspending for the test's length",
    }
    pool = pool_factory(
        routes={SITE: [{"host": rx.host, "port": rx.port}]},
        egress=[
            {"address": BLOCKED, "helo": "egress-2.sender.test"},
            {"address": OTHER, "helo": "egress-3.sender.test"},
        ],
        bounces={"rules": [rule]},
    )
    # The refused record is not retried within the test: its retry would go to
    # the site's partition, maybe the other relay's, which would then meet the
    # 421 itself instead of learning it from the events topic.
    pool.config = pool.config.model_copy(
        update={"retry": RetrySettings(schedule_seconds=[3600], max_age_seconds=7200)}
    )
    samples.write_config(pool.config, pool.path)
    a, b = relays(pool, "relay-a"), relays(pool, "relay-b")
    wait_for(lambda: _members(pool) == 2, 90, "both relays in the group", a)

    # Only the relay of partition 0 sends first, and meets the 421 (it sends
    # from both IPs in turn) ...
    _send(pool, "first", 2, partitions=(0,))
    wait_for(lambda: gmail.first_421 is not None, 60, "a 421 4.7.28 to 127.0.0.2", a)
    # ... and both hold the suspension: the other read it from the events topic,
    # and never tried 127.0.0.2 itself.
    wait_for(lambda: _holds(a) and _holds(b), 30, "both relays hold the suspension", b)
    assert len(gmail.from_blocked(0)) == 1
    during_from = time.time()
    during = _send(pool, "during", 4)

    def delivered(rcpts: set[str]) -> bool:
        return set(rx.recipients()) >= rcpts

    everything = set().union(*during.values())
    wait_for(lambda: delivered(everything), 90, "delivered from the other IP", a)
    # Neither relay tried 127.0.0.2 once both held the suspension, until it ended.
    tried = [m for m in gmail.from_blocked(during_from) if m[1] < gmail.lifted_at - 1]
    assert tried == [], tried
    # Both relays delivered during the suspension, from the other IP only.
    early = [m for m in rx.messages() if m.time < gmail.lifted_at - 1]
    for partition in PARTITIONS:
        theirs = [m for m in early if set(m.rcpt_tos) <= during[partition]]
        assert theirs and {m.peer for m in theirs} == {OTHER}, (partition, theirs)

    # Lifted on time: records due just after the suspension's end go out from
    # 127.0.0.2 again on both relays (each alternates its IPs once it may: a
    # suspension that outlived its duration would send them all from the other).
    after = _send(pool, "after", 4, not_before=gmail.lifted_at + LIFT_MARGIN_SECONDS)
    everything_after = set().union(*after.values())
    wait_for(lambda: delivered(everything_after), 150, "delivered after the suspension", a)
    for partition in PARTITIONS:
        peers = {m.peer for m in rx.messages() if set(m.rcpt_tos) <= after[partition]}
        assert BLOCKED in peers, (partition, peers)
