"""The cache and single flight the MX and TLSA resolvers share (`delivery.lookups`):
one query per name however many ask at once, a cancelled asker does not
cancel it for the others, answers and listed failures kept for their time,
other failures not kept, and the cache bounded."""

from __future__ import annotations

import asyncio

import pytest

from mailpipe.relay.delivery.lookups import CachedLookups


class Temporary(Exception):
    pass


class Fetcher:
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, name: str) -> tuple[str, float]:
        self.asked.append(name)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return f"answer of {name}", 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_askers_share_one_query_and_a_cancelled_one_cancels_nothing() -> None:
    fetch = Fetcher()
    lookups: CachedLookups[str] = CachedLookups(fetch, {Temporary: 5.0})
    first = asyncio.create_task(lookups.get("a.test"))
    second = asyncio.create_task(lookups.get("a.test"))
    await asyncio.sleep(0)
    first.cancel()
    fetch.release.set()
    assert await second == "answer of a.test"
    assert fetch.asked == ["a.test"]
    assert await lookups.get("a.test") == "answer of a.test"  # cached
    assert fetch.asked == ["a.test"]


async def test_answers_and_listed_failures_are_kept_for_their_time_others_not() -> None:
    fetch, clock = Fetcher(), Clock()
    fetch.release.set()
    lookups: CachedLookups[str] = CachedLookups(fetch, {Temporary: 5.0}, clock)
    await lookups.get("a.test")
    clock.now += 9.9
    await lookups.get("a.test")
    clock.now += 0.2  # past the answer's 10 s
    await lookups.get("a.test")
    assert fetch.asked == ["a.test", "a.test"]

    fetch.fail = Temporary("timeout")
    for _ in range(2):
        with pytest.raises(Temporary):
            await lookups.get("b.test")
    assert fetch.asked.count("b.test") == 1  # the failure is kept 5 s
    clock.now += 5.1
    fetch.fail = None
    assert await lookups.get("b.test") == "answer of b.test"

    fetch.fail = ValueError("a bug")
    for _ in range(2):
        with pytest.raises(ValueError):
            await lookups.get("c.test")
    assert fetch.asked.count("c.test") == 2  # not a listed failure: never kept


async def test_the_cache_is_bounded_dropping_expired_entries_then_the_oldest() -> None:
    fetch, clock = Fetcher(), Clock()
    fetch.release.set()
    lookups: CachedLookups[str] = CachedLookups(fetch, {}, clock, max_entries=2)
    await lookups.get("old.test")
    clock.now += 5
    await lookups.get("mid.test")
    await lookups.get("new.test")  # full: the oldest goes
    fetch.asked.clear()
    await lookups.get("mid.test")
    await lookups.get("new.test")
    assert fetch.asked == []
    await lookups.get("old.test")
    assert fetch.asked == ["old.test"]
