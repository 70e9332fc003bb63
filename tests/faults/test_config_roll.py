"""Fault: a relay config change rolled out under load.

Two ways a config change reaches running relays: the mounted ConfigMap is
re-read in place (`relay.main._watch_config`), or the Deployment rolls (the
operator changes the pod template's config hash): a relay with the new config
starts, joins the group, and the old one is stopped gracefully (SIGTERM: drain,
final commit, leave the group).

Reloaded in place, or rolled: nothing lost, nothing delivered twice
(ARCHITECTURE.md, "Nothing sent twice on a hand-over").

The mechanism that used to send mail twice when rolled (12 to 87 of 800):
the new relay's join moves partitions while the old one is delivering. The
old one could commit nothing from the moment the rebalance started, and its
commits stopped at the lowest unfinished offset anyway, so the new owner
re-sent everything the old one had finished past it. Now, when the rebalance
starts, the old relay holds new work of its partitions, waits for the
attempts running on them (`handover.DRAIN_SECONDS`), and commits before it
rejoins (kafka-python's async rebalance listener), the offsets finished past
the commit in the commit's metadata; the new owner reads them with the
committed offset and skips those records (`kafka.metadata`, `offsets`). The
graceful stop's final commit carries them too.

The residual bound, not reached here: an SMTP transaction still running when
the drain gives up (10 s) or when the stopping relay's grace period ends
(20 s) is also sent by the new owner (RFC 1047's window: the receiver may
have the message while the sender does not know). This receiver answers in
10 ms, so the bound here is 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mailpipe.contracts.config import RelayConfig
from mailpipe.devstack import samples
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from tests.conftest import wait_for
from tests.relay.integration.conftest import MX_HOST, Pool, RelayProcess
from tests.relay.integration.test_shaping import _members

from .conftest import count

pytestmark = [pytest.mark.faults, pytest.mark.relay]

DOMAINS = [f"roll{i}.test" for i in range(4)]
TOTAL = 800
REPLY_DELAY_SECONDS = 0.01  # a realistic MX
RATE_PER_DOMAIN = 600  # messages per minute: 800 records take ~20 s, so the roll is mid-stream
WINDOW = 100  # records read ahead per relay: most are still on Kafka when the roll starts
# ~45 s on a quiet machine; CI's parallel phase once needed more than 120 s
# (postponed records of a full read window wait out delay steps). Under the
# suite's 300 s per-test limit, so a timeout says where the recipients are.
FINISH_TIMEOUT_SECONDS = 240


def _loaded_pool(
    pool_factory: Callable[..., Pool], smtp_receiver: Callable[[str, int], SMTPReceiver]
) -> tuple[SMTPReceiver, Pool, list[str]]:
    rx = smtp_receiver(MX_HOST, 0)
    rx.policy.reply_delay_seconds = REPLY_DELAY_SECONDS
    pool = pool_factory(
        routes={d: [{"host": rx.host, "port": rx.port}] for d in DOMAINS},
        kafka={"max_in_flight_records": WINDOW},
        throttle_default={"messages_per_minute": RATE_PER_DOMAIN},
    )
    sent = [f"u{i}@{DOMAINS[i % len(DOMAINS)]}" for i in range(TOTAL)]
    for rcpt in sent:
        pool.send(rcpt)
    pool.flush()
    return rx, pool, sent


def _changed(pool: Pool, **fields: Any) -> RelayConfig:
    """The pool's config with `fields` replaced, validated as the relay will read it."""
    return RelayConfig.model_validate({**pool.config.model_dump(), **fields})


def _twice(pool: Pool) -> list[list[tuple[str, float]]]:
    """Who delivered the recipients delivered twice, and when (for the failure message)."""
    by: dict[str, list[tuple[str, float]]] = {}
    for e in pool.events():
        if e["disposition"] == "delivered":
            by.setdefault(e["recipient"], []).append((e.get("relay"), e["time"]))
    return [v for v in by.values() if len(v) > 1][:10]


def _finished(pool: Pool, sent: list[str], rx: SMTPReceiver) -> Callable[[], bool]:
    def done() -> bool:
        t = count(pool, sent, rx.recipients())
        return t.lost == 0 and t.stalled == 0

    return done


def _wait_finished(pool: Pool, sent: list[str], rx: SMTPReceiver, relay: RelayProcess) -> None:
    """Every recipient delivered, within a deadline that allows for a loaded
    machine: records the full read window postponed wait out a delay step (or
    more) before they come back. A timeout says where the recipients are."""
    try:
        wait_for(
            _finished(pool, sent, rx), FINISH_TIMEOUT_SECONDS, "every recipient delivered", relay
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrecipients: {count(pool, sent, rx.recipients())}") from None


def test_a_config_reloaded_in_place_under_load_loses_and_repeats_nothing(
    pool_factory: Callable[..., Pool],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
    relays: Callable[..., RelayProcess],
) -> None:
    rx, pool, sent = _loaded_pool(pool_factory, smtp_receiver)
    relay = relays(pool)
    wait_for(lambda: len(rx.recipients()) >= TOTAL // 8, 60, "deliveries under way", relay)
    samples.write_config(
        _changed(pool, throttles={DOMAINS[0]: {"max_connections": 1, "messages_per_minute": 300}}),
        pool.path,
    )
    wait_for(lambda: "config reloaded" in relay.log_tail(200), 30, "the reload", relay)
    at_reload = len(rx.recipients())
    _wait_finished(pool, sent, rx, relay)
    t = count(pool, sent, rx.recipients())
    print(f"config reload: {t} (delivered at the reload: {at_reload})")
    assert at_reload < TOTAL, "everything was delivered before the reload"
    assert (t.lost, t.stalled, t.finals_twice, t.duplicated) == (0, 0, 0, 0), t


def test_a_rolled_relay_under_load_loses_nothing(
    pool_factory: Callable[..., Pool],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
    relays: Callable[..., RelayProcess],
) -> None:
    rx, pool, sent = _loaded_pool(pool_factory, smtp_receiver)
    old = relays(pool, "relay-old")
    wait_for(lambda: len(rx.recipients()) >= TOTAL // 20, 60, "deliveries under way", old)

    # The new ReplicaSet's pod: the changed config, same pool, same group.
    pool.path = samples.write_config(
        _changed(pool, throttle_default={"max_connections": 4, "messages_per_minute": 900}),
        pool.tmp / f"{pool.prefix}-v2.yaml",
    )
    new = relays(pool, "relay-new")
    wait_for(lambda: _members(pool) == 2, 60, "the new relay in the group", new)
    old.stop()  # SIGTERM, as the Deployment does once the new pod is ready
    assert old.returncode == 0, old.log_tail()
    at_stop = len(rx.recipients())
    _wait_finished(pool, sent, rx, new)
    t = count(pool, sent, rx.recipients())
    print(f"rolled relay: {t} (delivered when the old relay stopped: {at_stop})")
    assert at_stop < TOTAL, "everything was delivered before the roll"
    assert (t.lost, t.stalled) == (0, 0), t
    # ARCHITECTURE.md, "Nothing sent twice on a hand-over": a partition changing hands re-sends
    # nothing.
    assert (t.duplicated, t.finals_twice) == (0, 0), (t, _twice(pool))
