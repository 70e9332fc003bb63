"""Campaign counts from the events topic: the latest disposition per recipient.

Relays emit one event per recipient attempt, so a deferred-then-delivered
recipient has two events and a crash can repeat one. Counting the *latest*
disposition per (campaign, recipient) gives counts that add up to the
audience and a campaign that is complete exactly when every recipient has a
final disposition. Pure: fed by a topic follower, read by status timers.

A bounced or deferred recipient is also counted under its bounce class (the
event's `bounce_class`, "unclassified" for events from before it existed),
so `status.bouncedByClass` says what the bounces were about.

Complaints and unsubscribes come back after the attempt's outcome (from the
complaint receiver and the one-click endpoint): each is counted once per
recipient, and never replaces the recipient's delivery outcome. Every count
is also kept per A/B variant (the event's `variant`), so an A/B test has a
readable result: delivered, bounced by class, complained, unsubscribed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

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
# What comes back after the outcome: counted once per recipient, beside the outcome.
AFTERWARDS = (Disposition.COMPLAINED, Disposition.UNSUBSCRIBED)
# What status.variants shows per variant (the A/B result), besides bouncedByClass.
VARIANT_COUNTED = ("delivered", "bounced", "complained", "unsubscribed")


@dataclass
class _Counts:
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


@dataclass
class _Campaign(_Counts):
    # recipient -> (time, disposition, bounce class, variant) of the latest outcome
    latest: dict[str, tuple[float, Disposition, str, str | None]] = field(default_factory=dict)
    afterwards: dict[Disposition, set[str]] = field(
        default_factory=lambda: {d: set() for d in AFTERWARDS}
    )
    variants: dict[str, _Counts] = field(default_factory=dict)

    def count_in(
        self, variant: str | None, disposition: Disposition, bounce_class: str, n: int
    ) -> None:
        self.count(disposition, bounce_class, n)
        if variant is not None:
            self.variants.setdefault(variant, _Counts()).count(disposition, bounce_class, n)


class Tally:
    def __init__(self) -> None:
        self._campaigns: dict[str, _Campaign] = {}

    def observe(self, event: Event) -> None:
        if event.campaign is None:
            return
        c = self._campaigns.setdefault(event.campaign, _Campaign())
        rcpt = event.recipient.lower()
        if event.disposition in c.afterwards:
            seen = c.afterwards[event.disposition]
            if rcpt not in seen:
                seen.add(rcpt)
                c.count_in(event.variant, event.disposition, UNCLASSIFIED, 1)
            return
        prev = c.latest.get(rcpt)
        if prev is not None:
            if prev[1] in FINAL and event.disposition not in FINAL:
                return  # a late duplicate deferral never undoes a final outcome
            if prev[1] in FINAL and event.disposition in FINAL and prev[0] > event.time:
                return
            c.count_in(prev[3], prev[1], prev[2], -1)
        bounce_class = event.bounce_class or UNCLASSIFIED
        c.latest[rcpt] = (event.time, event.disposition, bounce_class, event.variant)
        c.count_in(event.variant, event.disposition, bounce_class, 1)

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

    def variants(self, campaign: str) -> dict[str, dict[str, Any]]:
        """Per A/B variant: recipients delivered, bounced, complained and
        unsubscribed, and the bounced ones per class (status.variants)."""
        c = self._campaigns.get(campaign)
        if c is None:
            return {}
        return {
            name: {
                **{k: v.counts.get(k, 0) for k in VARIANT_COUNTED},
                "bouncedByClass": dict(sorted(v.by_class[Disposition.BOUNCED].items())),
            }
            for name, v in sorted(c.variants.items())
        }

    def finished(self, campaign: str) -> int:
        """Recipients with a final disposition."""
        c = self._campaigns.get(campaign)
        if c is None:
            return 0
        return sum(1 for _, d, _, _ in c.latest.values() if d in FINAL)

    def forget(self, campaign: str) -> None:
        self._campaigns.pop(campaign, None)
