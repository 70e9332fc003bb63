"""Shaping state: message rates and connection counts per site, site actions per egress IP.

The counters only; `scheduling` is where they are consulted and the limits
enforced. Kafka keys records by site (`contracts.sites`; a record read under
another key is forwarded to its site's partition), so exactly one replica owns
a site at a time; the limits kept here in memory are therefore pool-wide
limits (ARCHITECTURE.md, "Limits hold pool-wide") without any shared counter store. All
times come from the injected clock's monotonic reading, so tests drive them
without sleeping.

A site action (a reply rule's `suspend` or `slow`, `contracts.site_actions`)
is the exception: it is about one egress IP, and the IP sends for every relay
of the pool, so its table is shared through the events topic and kept in
wall-clock time (`actions`); a slowed IP's own pace is a token bucket here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailpipe.contracts.config import Throttle
from mailpipe.contracts.site_actions import SiteAction, SiteActions


class TokenBucket:
    """Messages per minute with a burst of one: sends are spaced, never bunched.

    What is counted is what a receiver counts: a transaction arriving. So the
    token that lets a message go is taken (`take`) just before its MAIL FROM,
    on a connection already greeted, and only when it is free *at that moment*:
    two tokens are always at least one interval apart on the clock that took
    them, so any window of 60 s holds at most `messages_per_minute` MAIL FROMs
    as sent (ARCHITECTURE.md, "Limits hold pool-wide"), however late a waiter wakes. A
    token whose MAIL FROM was not written after all is given back (`give_back`).

    Opening a connection takes seconds (connect, greeting, EHLO, STARTTLS), so
    lanes are also paced *before* they start an attempt (`turn`): a lane starts
    when its token should be free by then, rather than holding a greeted
    connection idle while it waits. Turns are advice only; they never run ahead
    of the tokens actually taken. Pure: times are passed in.
    """

    def __init__(self, messages_per_minute: float, now: float) -> None:
        self.interval = 60.0 / messages_per_minute
        self._next_free = now  # earliest time of the next token
        self._next_turn = now  # earliest start of the next lane's attempt
        self._last: float | None = None  # when the last token was taken

    def take(self, now: float) -> float:
        """Take the token if it is free at `now` (0.0), or how long until it is
        (nothing taken: the caller waits and asks again, so a waiter that wakes
        late never sends closer than one interval to the token before)."""
        if now < self._next_free:
            return self._next_free - now
        self._next_free = now + self.interval
        self._last = now
        return 0.0

    def give_back(self, at: float) -> None:
        """The token taken at `at` was not used (no MAIL FROM written). If no token
        was taken after it, its slot is free again; otherwise it stays spent,
        which only ever sends less than the rate."""
        if self._last == at:
            self._next_free = at
            self._last = None

    def free_in(self, now: float) -> float:
        """Seconds until a token is free (0.0: now); takes nothing."""
        return max(0.0, self._next_free - now)

    def turn(self, now: float) -> float:
        """When a lane may start its next attempt: paced at the rate, never before
        the next free token. Takes nothing."""
        at = max(now, self._next_turn, self._next_free)
        self._next_turn = at + self.interval
        return at


@dataclass
class Shaper:
    """State of one shaping key (a domain, or a group with a shared override)."""

    throttle: Throttle
    bucket: TokenBucket | None
    connections: int = 0

    def can_open(self) -> bool:
        return self.connections < self.throttle.max_connections


def slowed_rate(action: SiteAction, throttle: Throttle) -> float:
    """Messages per minute of an IP a `slow` action holds: its rate, and at most
    its fraction of the site's configured rate when the site has one."""
    assert action.messages_per_minute is not None  # a slow action always has one
    rate = action.messages_per_minute
    if action.rate_factor is not None and throttle.messages_per_minute is not None:
        rate = min(rate, action.rate_factor * throttle.messages_per_minute)
    return rate


@dataclass
class Shaping:
    """All shapers of a relay, created on first use from the config's lookup."""

    shapers: dict[str, Shaper] = field(default_factory=dict)
    # The pool's site actions (shared with the events follower) and the pace of
    # each slowed (site, IP).
    actions: SiteActions = field(default_factory=SiteActions)
    slowed: dict[tuple[str, str], TokenBucket] = field(default_factory=dict)

    def shaper(self, key: str, throttle: Throttle, now: float) -> Shaper:
        shaper = self.shapers.get(key)
        if shaper is None or shaper.throttle != throttle:
            bucket = (
                TokenBucket(throttle.messages_per_minute, now)
                if throttle.messages_per_minute
                else None
            )
            connections = shaper.connections if shaper else 0
            shaper = Shaper(throttle, bucket, connections)
            self.shapers[key] = shaper
        return shaper

    def slow_bucket(self, site: str, ip: str, rate: float, now: float) -> TokenBucket:
        """The pace of `ip` to `site` while a slow action holds (made anew when
        the rate changes)."""
        bucket = self.slowed.get((site, ip))
        if bucket is None or bucket.interval != 60.0 / rate:
            bucket = self.slowed[(site, ip)] = TokenBucket(rate, now)
        return bucket
