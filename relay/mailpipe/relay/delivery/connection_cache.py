"""Pooled SMTP connections: reuse bounded by idle time and session age, ended with QUIT.

A receiver gives each open session a process or a slot, closes idle ones on
its own schedule, and may change its certificate or policy while a session
stays open. So a pooled connection is kept only while both limits of its
destination (`Throttle.connection_idle_seconds`, `connection_max_age_seconds`;
Postfix's `smtp_connection_cache_time_limit` 2 s and
`smtp_connection_reuse_time_limit` 300 s by default) hold:

    unused longer than the idle limit          -> QUIT   (reason "idle")
    connected longer than the age limit        -> QUIT   (reason "age"; never taken again)
    messages-per-connection reached            -> QUIT   (reason "messages")
    found closed or broken by the server       -> closed (reason "lost": nothing to say QUIT on)
    the relay stops                            -> QUIT   (reason "shutdown")

`sweep` is called on a timer (the transport's one-second watchdog), so an
idle connection is closed even if its destination is never wanted again, not
only when the next message looks for it. Every connection that leaves the
cache is counted by reason (`mailpipe_smtp_connections_closed_total`).

Pure bookkeeping over an injected clock: the sessions are anything with
`is_open`, `close()` and `quit()`, so the limits are unit-tested without a
socket; the QUITs run as tasks this cache keeps until they are done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar


class CloseReason(enum.StrEnum):
    """Why a pooled connection left the cache (the metric's `reason` label)."""

    IDLE = "idle"
    AGE = "age"
    MESSAGES = "messages"
    LOST = "lost"
    SITE_LIMIT = "site_limit"  # made room for a new connection of the site (transport)
    SHUTDOWN = "shutdown"


class Pooled(Protocol):
    """What the cache needs of a session (`session.Session` is one)."""

    @property
    def is_open(self) -> bool: ...

    def close(self) -> None: ...

    async def quit(self) -> None: ...


K = TypeVar("K", bound=Hashable)
S = TypeVar("S", bound=Pooled)


@dataclasses.dataclass(frozen=True)
class ReuseLimits:
    """A destination's connection reuse limits, in seconds (see `Throttle`)."""

    idle_seconds: float
    max_age_seconds: float


@dataclasses.dataclass
class _Idle(Generic[S]):
    session: S
    limits: ReuseLimits
    opened: float  # the cache's clock when the connection was made
    since: float  # ... when it was last given back

    def expired(self, now: float) -> CloseReason | None:
        if now - self.opened >= self.limits.max_age_seconds:
            return CloseReason.AGE
        if now - self.since >= self.limits.idle_seconds:
            return CloseReason.IDLE
        return None


class ConnectionCache(Generic[K, S]):
    """Idle connections per key (egress IP, MX host, port, name, TLS plan)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        closed: Callable[[CloseReason], None] = lambda _reason: None,
    ) -> None:
        self._clock = clock
        self._closed = closed  # counts each connection leaving, by reason
        self._idle: dict[K, list[_Idle[S]]] = {}
        # when each connection was made (weak: one closed mid-transaction just goes)
        self._opened: weakref.WeakKeyDictionary[S, float] = weakref.WeakKeyDictionary()
        self._quitting: set[asyncio.Task[None]] = set()

    def opened(self, session: S) -> None:
        """Start `session`'s age: called once, right after it connected."""
        self._opened[session] = self._clock()

    def take(self, key: K) -> S | None:
        """The most recently used idle connection for `key` still within its limits;
        the ones found past them (or closed by the server) are retired on the way."""
        idle = self._idle.get(key)
        now = self._clock()
        while idle:
            entry = idle.pop()
            if not entry.session.is_open:
                self._retire(entry.session, CloseReason.LOST)
                continue
            reason = entry.expired(now)
            if reason is not None:
                self._retire(entry.session, reason)
                continue
            if not idle:
                del self._idle[key]
            return entry.session
        self._idle.pop(key, None)
        return None

    def give_back(self, key: K, session: S, limits: ReuseLimits, *, spent: bool) -> None:
        """`session` finished a transaction: pool it, or retire it when `spent` (its
        messages-per-connection reached), closed, or past its age limit."""
        now = self._clock()
        opened = self._opened.get(session, now)
        if not session.is_open:
            self._retire(session, CloseReason.LOST)
        elif spent:
            self._retire(session, CloseReason.MESSAGES)
        elif now - opened >= limits.max_age_seconds:
            self._retire(session, CloseReason.AGE)
        else:
            self._idle.setdefault(key, []).append(_Idle(session, limits, opened, now))

    def discard(self, session: S) -> None:
        """`session` was closed by its user (lost mid-transaction, cut): forget it."""
        if self._opened.pop(session, None) is not None:
            self._closed(CloseReason.LOST)

    def sweep(self) -> None:
        """Retire every idle connection past its limits or closed by the server.
        Called on a timer, so a destination never wanted again is not kept open."""
        now = self._clock()
        for key in list(self._idle):
            keep = []
            for entry in self._idle[key]:
                reason = CloseReason.LOST if not entry.session.is_open else entry.expired(now)
                if reason is None:
                    keep.append(entry)
                else:
                    self._retire(entry.session, reason)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    async def make_room(self, count: int, belongs: Callable[[S], bool]) -> None:
        """QUIT the `count` longest-idle connections `belongs` picks and wait for
        their goodbyes: the transport opens a connection of a site only once the
        receiver cannot count one more than the site's limit."""
        found = [(entry.since, key, entry) for key, idle in self._idle.items() for entry in idle]
        chosen = sorted((f for f in found if belongs(f[2].session)), key=lambda f: f[0])[:count]
        goodbyes = []
        for _, key, entry in chosen:
            self._idle[key].remove(entry)
            if not self._idle[key]:
                del self._idle[key]
            goodbyes.append(self._retire(entry.session, CloseReason.SITE_LIMIT))
        await asyncio.gather(*(g for g in goodbyes if g is not None))

    def __len__(self) -> int:
        """Idle connections held."""
        return sum(len(idle) for idle in self._idle.values())

    async def close(self) -> None:
        """QUIT every idle connection and wait for all QUITs sent so far."""
        entries = [e for idle in self._idle.values() for e in idle]
        self._idle.clear()
        for entry in entries:
            self._retire(entry.session, CloseReason.SHUTDOWN)
        await asyncio.gather(*self._quitting)

    def _retire(self, session: S, reason: CloseReason) -> asyncio.Task[None] | None:
        """Count `session` out and QUIT it in the background (the task, to wait on)."""
        self._opened.pop(session, None)
        self._closed(reason)
        if reason is CloseReason.LOST:
            session.close()  # the server went away: nothing to say goodbye on
            return None
        task = asyncio.get_running_loop().create_task(session.quit())
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)
        return task
