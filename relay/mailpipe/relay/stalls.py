"""The tarpit budget: a domain whose attempts stall must not pin the read window.

A tarpit MX accepts the connection and then says nothing (or greets and then
stalls): each attempt holds its record until a stage timeout fires, minutes
by RFC 5321 4.5.3.2. Its records are unfinished, so nothing read after them
on their partition can be committed; the read window fills with them and
every other domain waits (issue 10, finding 5: a healthy domain delayed 32 s
at a 15-s timeout, hours at the defaults). Postponing only the domain's
queued records would not help: they sit behind the stalled offsets.

So while the read window is full, a domain whose oldest attempt has run
longer than `delivery.stall_budget_seconds` is *cut* (ARCHITECTURE.md, "No
head-of-line blocking"): its attempts in flight are cancelled and deferred with a
reason naming the budget (a retry record on the pool's schedule, like any
4xx), its queued records are postponed (`stalled_domain`), and records that
reach it within one more budget are postponed at once instead of stalling
again. A cut attempt's offset finishes only once its events and retry
record are acknowledged, like every other (ARCHITECTURE.md, "Nothing lost"). Cutting an attempt
whose message was already sent may deliver it twice, exactly as a connection
lost after the message would (at-least-once); a tarpit stalls long before.

Below the budget, or while the window has room, attempts run their stage
timeouts in full: the budget only spends what other domains would wait for.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .ports import Clock


class Attempt:
    """One lane's delivery in flight, registered with its domain while the `with`
    block runs: when it started, and whether it was cut. (A class rather than a
    generator context manager: one is made per attempt, on the hot path.)"""

    __slots__ = ("cut", "domain", "stalls", "started", "task")

    def __init__(self, stalls: Stalls, domain: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.stalls = stalls
        self.domain = domain
        self.task: asyncio.Task[Any] = task
        self.started = stalls.clock.monotonic()
        self.cut = False

    def __enter__(self) -> Attempt:
        self.stalls._running.setdefault(self.domain, {})[self.task] = self
        return self

    def __exit__(self, *exc: object) -> None:
        running = self.stalls._running[self.domain]
        del running[self.task]
        if not running:
            del self.stalls._running[self.domain]

    def uncut(self) -> bool:
        """After catching the cut's CancelledError: True if that was all (carry on
        deferring), False if the task was also cancelled otherwise (shutdown)."""
        return self.task.uncancel() == 0


class Stalls:
    """Attempts in flight per domain, and the domains cut recently."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._running: dict[str, dict[asyncio.Task[Any], Attempt]] = {}
        self._cut_until: dict[str, float] = {}  # domain -> monotonic end of its cut

    def watch(self, domain: str) -> Attempt:
        """`with stalls.watch(domain) as attempt:` around the current task's delivery."""
        return Attempt(self, domain)

    def cut(self, budget: float) -> list[str]:
        """Cancel every attempt older than `budget`; the domains they belong to."""
        now = self.clock.monotonic()
        self._cut_until = {d: t for d, t in self._cut_until.items() if t > now}
        domains = []
        for domain, running in self._running.items():
            over = [a for a in running.values() if not a.cut and now - a.started > budget]
            if not over:
                continue
            for attempt in over:
                attempt.cut = True
                attempt.task.cancel()
            self._cut_until[domain] = now + budget
            domains.append(domain)
        return domains

    def cut_recently(self, domain: str) -> bool:
        """Whether `domain` was cut less than one budget ago: its new records wait."""
        until = self._cut_until.get(domain)
        return until is not None and until > self.clock.monotonic()

    def describe(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        return {
            "oldest_attempt_seconds": {
                d: round(now - min(a.started for a in r.values()), 1)
                for d, r in self._running.items()
            },
            "cut": sorted(d for d, t in self._cut_until.items() if t > now),
        }
