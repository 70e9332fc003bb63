"""A record's rate token, as the transport takes it: just before the MAIL FROM.

Receivers count the transactions that arrive. A token taken before the
connection is ready (connect, greeting, EHLO, STARTTLS take seconds) would be
spent seconds later, bunched with the tokens of connections already open: up
to `max_connections` messages over the limit in one window. So the scheduler
hands each record a `RecordToken` (in its envelopes, `ports.Envelope.gate`),
and the session calls `before_mail()` on a greeted connection right before it
writes MAIL FROM, on every path: a new connection, a pooled one, pipelined or
not (ARCHITECTURE.md, "Limits hold pool-wide").

A record is one message for the rate however many transactions its
recipients need: its first MAIL FROM takes the token, the transactions after
it ride on it. A token is taken only when it is free at that moment, so an
attempt cut or shut down while it waits has taken nothing; a token whose MAIL
FROM was not written after all (the connection closed while it waited) is
given back (`unused`), and the next MAIL FROM of the record takes a token of its
own. The same token decides whether the record's IP warm-up count stands
(`used`): a record that never reached a MAIL FROM is not counted as sent.

The bucket's arithmetic is pure (`throttle.TokenBucket`); this is the part
that waits, on the injected clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .ports import Clock
from .throttle import TokenBucket


class RecordToken:
    """One record's claim on its shaping key's bucket (`ports.RateGate`)."""

    def __init__(
        self,
        bucket: TokenBucket | None,
        clock: Clock,
        observe_wait: Callable[[float], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._bucket = bucket  # None: the destination has no rate limit
        self._clock = clock
        self._observe_wait = observe_wait
        # How to wait for the token: the scheduler's, so a shutdown cancels a
        # record still waiting (nothing written; the record stays unfinished).
        self._sleep = sleep or clock.sleep
        self._at: float | None = None  # when the token held was taken
        self._uses = 0  # MAIL FROMs written on the token held
        self.mails = 0  # MAIL FROMs of this record written, on any token

    @property
    def used(self) -> bool:
        """A MAIL FROM of this record was written: it counts as sent."""
        return self.mails > 0

    async def before_mail(self) -> None:
        """Wait for the record's token and take it, unless the record holds one:
        called right before each MAIL FROM is written, nothing awaited after it."""
        if self._at is None:
            if self._bucket is None:
                self._at = self._clock.monotonic()
            else:
                self._at = await self._take(self._bucket)
        self._uses += 1
        self.mails += 1

    async def _take(self, bucket: TokenBucket) -> float:
        started = self._clock.monotonic()
        now = started
        while (wait := bucket.take(now)) > 0:
            await self._sleep(wait)  # cancelled here: nothing was taken
            now = self._clock.monotonic()
        if self._observe_wait is not None:
            self._observe_wait(now - started)
        return now

    def unused(self) -> None:
        """The MAIL FROM `before_mail` was called for was not written (the
        connection was found closed): if the token carries no other, give it back."""
        self._uses -= 1
        self.mails -= 1
        if self._uses == 0:
            if self._at is not None and self._bucket is not None:
                self._bucket.give_back(self._at)
            self._at = None

    def renew(self) -> None:
        """The last MAIL FROM may have arrived, and its transaction is tried again
        on another connection: that one stays counted, the retry takes its own."""
        self._at = None
        self._uses = 0
