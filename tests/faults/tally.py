"""Counting what a fault did: sent, delivered, duplicated, lost, stalled.

Every fault test ends the same way: each recipient it sent must have reached
a receiver (lost 0), at most as many extra copies as the design allows
(duplicated), and exactly one final disposition on the events topic (stalled 0,
none twice). The numbers come from the two places a user would look: the
receivers' captured messages (what the MTAs got) and the pool's events topic
(what the relays said happened). Pure: the caller reads both sources.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mailpipe.contracts.wire import Disposition

# A recipient's attempts end in exactly one of these; `deferred` is not an end.
FINAL = frozenset(
    {
        Disposition.DELIVERED,
        Disposition.BOUNCED,
        Disposition.EXPIRED,
        Disposition.SUPPRESSED,
        Disposition.FAILED,
    }
)


@dataclass(frozen=True)
class Tally:
    sent: int  # recipients produced to the pool
    delivered: int  # of those, received by an MTA at least once
    duplicated: int  # extra copies the MTAs received beyond the first
    lost: int  # sent, never received
    stalled: int  # sent, no final disposition event yet
    finals_twice: int  # sent, more than one final disposition event
    deferred: int  # deferred events (each a retry the fault caused)
    reasons: Mapping[str, int]  # deferred events by reason, to say what the relay saw

    def __str__(self) -> str:
        return (
            f"sent={self.sent} delivered={self.delivered} duplicated={self.duplicated} "
            f"lost={self.lost} stalled={self.stalled} finals_twice={self.finals_twice} "
            f"deferred={self.deferred} reasons={dict(self.reasons)}"
        )


def tally(
    sent: Iterable[str], received: Iterable[str], events: Iterable[Mapping[str, Any]]
) -> Tally:
    """`sent`: the recipients produced; `received`: every recipient the MTAs
    accepted, one entry per copy; `events`: the events topic's values, decoded.

    Events of recipients not in `sent` (another test's) are ignored."""
    wanted = {r.lower() for r in sent}
    copies = Counter(r.lower() for r in received if r.lower() in wanted)
    finals: Counter[str] = Counter()
    deferred = 0
    reasons: Counter[str] = Counter()
    for e in events:
        rcpt = str(e.get("recipient", "")).lower()
        if rcpt not in wanted:
            continue
        disposition = e.get("disposition")
        if disposition in FINAL:
            finals[rcpt] += 1
        elif disposition == Disposition.DEFERRED:
            deferred += 1
            reasons[str(e.get("reason"))] += 1
    return Tally(
        sent=len(wanted),
        delivered=len(copies),
        duplicated=sum(n - 1 for n in copies.values()),
        lost=len(wanted - set(copies)),
        stalled=len(wanted - set(finals)),
        finals_twice=sum(1 for n in finals.values() if n > 1),
        deferred=deferred,
        reasons=reasons,
    )


def decode_events(values: Iterable[bytes | None]) -> list[dict[str, Any]]:
    """The events topic's values as dicts (tombstones skipped)."""
    return [json.loads(v) for v in values if v]
