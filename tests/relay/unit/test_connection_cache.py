"""The connection cache bounds reuse by idle time and session age, on a timer, with QUIT.

A fake clock and fake sessions: what is asserted is which connections get QUIT,
which are only closed, and the reason each is counted under."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from mailpipe.contracts.config import RelayConfig, dump_config
from mailpipe.contracts.policy import Throttle
from mailpipe.relay.delivery.connection_cache import CloseReason, ConnectionCache, ReuseLimits
from tests.relay.unit.conftest import make_config

POSTFIX = ReuseLimits(idle_seconds=2.0, max_age_seconds=300.0)


class FakeSession:
    def __init__(self) -> None:
        self.is_open = True
        self.quits = 0
        self.closes = 0

    def close(self) -> None:
        self.closes += 1
        self.is_open = False

    async def quit(self) -> None:
        self.quits += 1
        self.is_open = False


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def closed() -> Counter[CloseReason]:
    return Counter()


@pytest.fixture
def cache(clock: Clock, closed: Counter[CloseReason]) -> ConnectionCache[str, FakeSession]:
    return ConnectionCache(clock, closed=lambda reason: closed.update([reason]))


def fresh(cache: ConnectionCache[str, FakeSession]) -> FakeSession:
    session = FakeSession()
    cache.opened(session)
    return session


async def settled(cache: ConnectionCache[str, FakeSession]) -> None:
    await cache.close()  # waits for the QUITs sent so far (and quits what is still idle)


async def test_an_idle_connection_never_wanted_again_is_quit_by_the_timer(
    cache: ConnectionCache[str, FakeSession], clock: Clock, closed: Counter[CloseReason]
) -> None:
    session = fresh(cache)
    cache.give_back("mx", session, POSTFIX, spent=False)
    clock.now = 1.9
    cache.sweep()
    assert len(cache) == 1 and session.quits == 0
    clock.now = 2.0
    cache.sweep()  # nothing asked for "mx" again: the sweep alone ends it
    assert len(cache) == 0
    await asyncio.sleep(0)
    assert (session.quits, session.closes) == (1, 0)
    assert closed == {CloseReason.IDLE: 1}


async def test_a_busy_connection_is_retired_at_its_age_with_quit(
    cache: ConnectionCache[str, FakeSession], clock: Clock, closed: Counter[CloseReason]
) -> None:
    session = fresh(cache)
    uses = 0
    while True:  # a message every second: never idle, so only its age ends it
        cache.give_back("mx", session, POSTFIX, spent=False)
        clock.now += 1.0
        cache.sweep()
        taken = cache.take("mx")
        if taken is None:
            break
        assert taken is session
        uses += 1
    assert uses == 299  # given back at 0..299 s, refused when it is 300 s old
    await settled(cache)
    assert session.quits == 1 and closed == {CloseReason.AGE: 1}


async def test_a_connection_past_its_age_is_not_pooled_after_its_transaction(
    cache: ConnectionCache[str, FakeSession], clock: Clock, closed: Counter[CloseReason]
) -> None:
    session = fresh(cache)
    clock.now = 300.0  # one long transaction
    cache.give_back("mx", session, POSTFIX, spent=False)
    assert len(cache) == 0
    await settled(cache)
    assert session.quits == 1 and closed == {CloseReason.AGE: 1}


async def test_take_skips_expired_connections_and_says_quit_to_them(
    cache: ConnectionCache[str, FakeSession], clock: Clock, closed: Counter[CloseReason]
) -> None:
    old, recent = fresh(cache), fresh(cache)
    cache.give_back("mx", recent, POSTFIX, spent=False)
    clock.now = 1.5
    cache.give_back("mx", old, POSTFIX, spent=False)
    clock.now = 2.5  # `recent` idle 2.5 s, `old` 1 s; the timer has not run yet
    assert cache.take("mx") is old
    assert cache.take("mx") is None
    await settled(cache)
    assert (recent.quits, old.quits) == (1, 0)
    assert closed == {CloseReason.IDLE: 1}


async def test_a_connection_the_server_closed_is_closed_not_quit(
    cache: ConnectionCache[str, FakeSession], clock: Clock, closed: Counter[CloseReason]
) -> None:
    gone, dead_on_return = fresh(cache), fresh(cache)
    cache.give_back("mx", gone, POSTFIX, spent=False)
    gone.is_open = False  # the receiver hung up while it was idle
    cache.sweep()
    dead_on_return.is_open = False
    cache.give_back("mx", dead_on_return, POSTFIX, spent=False)
    await settled(cache)
    assert (gone.quits, dead_on_return.quits) == (0, 0)
    assert closed == {CloseReason.LOST: 2}


async def test_a_spent_connection_is_quit(
    cache: ConnectionCache[str, FakeSession], closed: Counter[CloseReason]
) -> None:
    session = fresh(cache)
    cache.give_back("mx", session, POSTFIX, spent=True)
    await settled(cache)
    assert session.quits == 1 and closed == {CloseReason.MESSAGES: 1}


async def test_each_destination_keeps_its_own_limits(
    cache: ConnectionCache[str, FakeSession], clock: Clock, closed: Counter[CloseReason]
) -> None:
    patient = ReuseLimits(idle_seconds=30.0, max_age_seconds=300.0)
    short, long = fresh(cache), fresh(cache)
    cache.give_back("mx-default", short, POSTFIX, spent=False)
    cache.give_back("mx-patient", long, patient, spent=False)
    clock.now = 10.0
    cache.sweep()
    assert cache.take("mx-patient") is long
    assert cache.take("mx-default") is None
    await settled(cache)
    assert (short.quits, long.quits) == (1, 0)
    assert closed == {CloseReason.IDLE: 1}


async def test_shutdown_quits_every_idle_connection(
    cache: ConnectionCache[str, FakeSession], closed: Counter[CloseReason]
) -> None:
    sessions = [fresh(cache) for _ in range(3)]
    for i, s in enumerate(sessions):
        cache.give_back(f"mx{i}", s, POSTFIX, spent=False)
    await cache.close()
    assert [s.quits for s in sessions] == [1, 1, 1]
    assert closed == {CloseReason.SHUTDOWN: 3}


def test_the_defaults_are_postfixs_and_a_destination_may_override_them() -> None:
    default = Throttle()
    assert (default.connection_idle_seconds, default.connection_max_age_seconds) == (2.0, 300.0)
    config = make_config(throttles={"slow.test": {"connectionIdleSeconds": 20}})
    assert config.throttle_for("slow.test").connection_idle_seconds == 20
    assert config.throttle_for("other.test").connection_idle_seconds == 2.0
    # the override survives the config file; defaults are left out (the hash as before)
    text = dump_config(config)
    assert "connection_idle_seconds: 20.0" in text and "connection_max_age_seconds" not in text
    RelayConfig.model_validate_json(config.model_dump_json())


@pytest.mark.parametrize(
    ("field", "value"),
    [("connectionIdleSeconds", 0), ("connectionIdleSeconds", 301), ("connectionMaxAgeSeconds", -1)],
    ids=["idle-zero", "idle-past-rfc-5321", "age-negative"],
)
def test_reuse_limits_out_of_range_are_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Throttle.model_validate({field: value})


async def test_making_room_quits_the_longest_idle_of_the_site_and_waits_for_the_goodbye(
    cache: ConnectionCache[str, FakeSession], clock: Clock, closed: Counter[CloseReason]
) -> None:
    """A new connection of a site over its limit: the site's idle ones go first,
    oldest first, QUIT before the caller opens; other sites' are kept."""
    site_of: dict[FakeSession, str] = {}
    older, newer, other = fresh(cache), fresh(cache), fresh(cache)
    for session, key, site, at in [
        (older, "mx-a", "google.com", 0.0),
        (other, "mx-c", "outlook.com", 0.1),
        (newer, "mx-b", "google.com", 0.5),
    ]:
        clock.now = at
        site_of[session] = site
        cache.give_back(key, session, POSTFIX, spent=False)
    await cache.make_room(1, lambda s: site_of[s] == "google.com")
    assert (older.quits, newer.quits, other.quits) == (1, 0, 0)  # done before it returned
    assert closed == Counter({CloseReason.SITE_LIMIT: 1})
    assert len(cache) == 2 and cache.take("mx-a") is None and cache.take("mx-b") is newer
