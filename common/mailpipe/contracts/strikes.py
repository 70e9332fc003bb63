"""Bounces that suppress only when they repeat: a count per address and class.

A policy refusal (`550 5.7.1 ... rejected by local policy`) says nothing
about the mailbox, so the bounce rules let such a class suppress only after
`after` bounces within `withinDays` (`contracts.bounces.SuppressionPolicy`).
The ledger remembers those bounces. It lives in the relay's memory: a restart
or another replica does not see them, so it errs towards suppressing later,
never earlier. Bounded: the oldest addresses are forgotten first. Pure: the
caller passes the time.
"""

from __future__ import annotations

from collections import OrderedDict

from .bounces import BounceClass, SuppressionPolicy
from .wire import suppression_key

SECONDS_PER_DAY = 86_400
# Addresses x classes remembered: ~100 bytes each, so about 10 MB at most per relay,
# far more than the policy refusals of a week of a pool's campaigns.
MAX_ENTRIES = 100_000


class StrikeLedger:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._times: OrderedDict[tuple[str, BounceClass], list[float]] = OrderedDict()
        self._max = max_entries

    def strike(
        self, address: str, bounce_class: BounceClass, policy: SuppressionPolicy, now: float
    ) -> int:
        """Count one bounce; the bounces of this class within the policy's window,
        this one included. Reaching `policy.after` forgets them (the address is
        suppressed from then on)."""
        key = (suppression_key(address), bounce_class)
        window = policy.within_days * SECONDS_PER_DAY
        times = [t for t in self._times.pop(key, ()) if now - t < window]
        times.append(now)
        if len(times) >= policy.after:
            return len(times)
        self._times[key] = times  # at the end: the most recently seen
        while len(self._times) > self._max:
            self._times.popitem(last=False)
        return len(times)

    def __len__(self) -> int:
        return len(self._times)
