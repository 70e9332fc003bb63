"""Cached, single-flight DNS lookups: what the MX and TLSA resolvers share.

A relay asks the same few names over and over (every lane of a domain, every
attempt), and a burst of lanes asks a new name at the same moment. So each
answer is cached for its TTL and each failure for a while (negative
caching, RFC 2308: no lookup storm against a failing resolver), concurrent
lookups of one name share one query, run as a task of its own so a caller
that is cancelled does not cancel it for the others, and the cache is
bounded (`MAX_CACHE_ENTRIES`): past it, expired entries go first, then the
oldest. The query itself, and which failures are cached for how long, are
the owner's (`mx.MXResolver`, `tlsa.TLSAResolver`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, TypeVar

MAX_CACHE_ENTRIES = 100_000  # names remembered; past it the oldest are dropped

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """One running lookup per key however many ask at once: a task of its own, so
    an asker that is cancelled does not cancel it for the others."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[T]] = {}  # key -> its one lookup

    async def run(self, key: str, start: Callable[[], Awaitable[T]]) -> T:
        """The outcome of the running lookup of `key`, or of `start()` begun now."""
        lookup = self._inflight.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(start())
            self._inflight[key] = lookup
            lookup.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(lookup)


class CachedLookups(Generic[T]):
    """Answers per name: `fetch(name)` gives (answer, seconds to keep it) or raises;
    a failure of a type in `failure_seconds` is kept that long and raised again
    to whoever asks meanwhile (others propagate, not kept)."""

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[tuple[T, float]]],
        failure_seconds: Mapping[type[Exception], float],
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_CACHE_ENTRIES,
    ) -> None:
        self._fetch = fetch
        self._failure_seconds = dict(failure_seconds)
        self._kept = tuple(failure_seconds)
        self._clock = clock
        self._max_entries = max_entries
        self._cache: dict[str, tuple[float, T | Exception]] = {}  # name -> (until, outcome)
        self._flights: SingleFlight[T] = SingleFlight()

    def clear(self) -> None:
        """Forget every answer (a new resolver: its answers may differ)."""
        self._cache.clear()

    def peek(self, name: str) -> T | Exception | None:
        """The cached outcome for `name` (an answer or a kept failure) while it is
        fresh, else None; never looks anything up."""
        cached = self._cache.get(name)
        if cached is None or cached[0] <= self._clock():
            return None
        return cached[1]

    async def get(self, name: str) -> T:
        """The answer for `name`: cached, the running lookup's, or a new lookup's."""
        outcome = self.peek(name)
        if outcome is None:
            return await self._flights.run(name, lambda: self._resolve(name))
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _resolve(self, name: str) -> T:
        """One lookup, cached with its outcome."""
        try:
            answer, seconds = await self._fetch(name)
        except self._kept as exc:
            self._remember(name, self._seconds_of(exc), exc)
            raise
        self._remember(name, seconds, answer)
        return answer

    def _seconds_of(self, exc: Exception) -> float:
        return next(s for kind, s in self._failure_seconds.items() if isinstance(exc, kind))

    def _remember(self, name: str, seconds: float, outcome: T | Exception) -> None:
        now = self._clock()
        if len(self._cache) >= self._max_entries:
            for key in [k for k, (until, _) in self._cache.items() if until <= now]:
                del self._cache[key]
            while len(self._cache) >= self._max_entries:
                del self._cache[next(iter(self._cache))]  # oldest entry first
        self._cache[name] = (now + seconds, outcome)
