"""Campaign counts from the events topic: the latest disposition per recipient.

Relays emit one event per recipient attempt, so a deferred-then-delivered
recipient has two events and a crash can repeat one. Counting the *latest*
disposition per (campaign, recipient) gives counts that add up to the
audience and a campaign that is complete exactly when every recipient has a
final disposition. Pure: fed by a topic follower, read by status timers.

A bounced or deferred recipient is also counted under its bounce class (the
event's `bounce_class`, "unclassified" for events from before it existed),
so `status.bouncedByClass` says what the bounces were about.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mailpipe.contracts.wire import Disposition, Event

FINAL = frozenset(
    {
        Disposition.DELIVERED,
        Disposition.BOUNCED,
        Disposition.SUPPRESSED,
        Disposition.EXPIRED,
        Disposition.FAILED,
    }
)
COUNTED = tuple(d.value for d in Disposition)  # the keys of status.counts, one per disposition


# The dispositions counted per bounce class as well (status.<disposition>ByClass).
BY_CLASS = (Disposition.BOUNCED, Disposition.DEFERRED)
UNCLASSIFIED = "unclassified"  # an event written before events carried a class


@dataclass
class _Campaign:
    latest: dict[str, tuple[float, Disposition, str]] = field(default_factory=dict)
    complained: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    by_class: dict[Disposition, Counter[str]] = field(
        default_factory=lambda: {d: Counter() for d in BY_CLASS}
    )

    def count(self, disposition: Disposition, bounce_class: str, n: int) -> None:
        self.counts[disposition.value] += n
        if disposition in self.by_class:
            per = self.by_class[disposition]
            per[bounce_class] += n
            if per[bounce_class] == 0:
                del per[bounce_class]


class Tally:
    def __init__(self) -> None:
        self._campaigns: dict[str, _Campaign] = {}

    def observe(self, event: Event) -> None:
        if event.campaign is None:
            return
        c = self._campaigns.setdefault(event.campaign, _Campaign())
        rcpt = event.recipient.lower()
        if event.disposition is Disposition.COMPLAINED:
            if rcpt not in c.complained:
                c.complained.add(rcpt)
                c.counts["complained"] += 1
            return
        prev = c.latest.get(rcpt)
        if prev is not None:
            if prev[1] in FINAL and event.disposition not in FINAL:
                return  # a late duplicate deferral never undoes a final outcome
            if prev[1] in FINAL and event.disposition in FINAL and prev[0] > event.time:
                return
            c.count(prev[1], prev[2], -1)
        bounce_class = event.bounce_class or UNCLASSIFIED
        c.latest[rcpt] = (event.time, event.disposition, bounce_class)
        c.count(event.disposition, bounce_class, 1)

    def counts(self, campaign: str) -> dict[str, int]:
        c = self._campaigns.get(campaign)
        base = dict.fromkeys(COUNTED, 0)
        if c is not None:
            base.update({k: v for k, v in c.counts.items() if k in base})
        return base

    def by_class(self, campaign: str, disposition: Disposition) -> dict[str, int]:
        """Recipients whose latest disposition is `disposition` (bounced or
        deferred), per bounce class."""
        c = self._campaigns.get(campaign)
        if c is None or disposition not in c.by_class:
            return {}
        return dict(sorted(c.by_class[disposition].items()))

    def finished(self, campaign: str) -> int:
        """Recipients with a final disposition."""
        c = self._campaigns.get(campaign)
        if c is None:
            return 0
        return sum(1 for _, d, _ in c.latest.values() if d in FINAL)

    def forget(self, campaign: str) -> None:
        self._campaigns.pop(campaign, None)
