"""The soak's pure half: what is produced, how the outcome is tallied, what it must show.

`bench/soak.py` runs real processes (Kafka, dnsmasq, receivers, two relays);
everything it decides lives here, free of IO, so the accounting that the
soak's verdict rests on (ARCHITECTURE.md, "Nothing lost": every record has
exactly one final disposition) can be read and checked on its own:

- `Plan`: which record goes to which domain, which recipients the receivers
  refuse or greylist, which addresses are suppressed up front, and where the
  poison records sit in the stream (the hostile shapes of
  tests/relay/unit/test_wire_hostile.py and
  tests/relay/integration/test_hostile_records.py);
- `Tally`: events, DLQ copies and receiver counts folded into one final
  disposition per record, with duplicates counted;
- `max_per_window`: a limited domain's messages in any minute;
- `rss_verdict`: a ceiling and "no steady growth in the second half" of each
  relay's RSS curve.

`bench/soak_report.py` turns these into the report and its list of problems.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Every Nth regular record gets a special recipient. Primes, so the classes
# never coincide and spread over every domain (the domain is i % domains).
BOUNCE_EVERY = 997  # the receiver answers 550 5.1.1: bounced and suppressed
GREYLIST_EVERY = 499  # 450 4.2.0 once, then 250: one retry through a delay topic
SUPPRESS_EVERY = 1009  # suppressed on the suppressions topic before the relays start
BOUNCE_REPLY = "550 5.1.1 no such user"
GREYLIST_REPLY = "450 4.2.0 greylisted, try again later"

POISON_COPIES = 2  # each hostile shape appears this often, spread over the stream
DEEPLY_NESTED = b"[" * 1000 + b"]" * 1000  # RecursionError in json before issue 10
HUGE_INTEGER = b'{"v":1,"attempt":' + b"9" * 4301 + b"}"  # int() digit limit
# Undecodable shapes -> the DLQ, with a reason that names the cause.
DLQ_POISON = {
    "deeply_nested": DEEPLY_NESTED,
    "huge_integer": HUGE_INTEGER,
    "not_utf8": b'{"v":1,"id":"' + b"\xff\xfe" * 5000 + b'"}',
}
# Decodable but hostile: a far-future not_before is refused at the wire (DLQ);
# domains the DNS library cannot even ask about are bounced 5.1.3.
FAR_FUTURE_NOT_BEFORE = 1e308
BAD_DOMAINS = ("a" * 64 + ".test", "x..test")

# RSS: a relay holds its read window (2,000 records by default) and a little
# per domain; 120-130 MiB was its peak at a 4,000-record window in bench.relay.
RSS_CEILING_MB = 400.0
# Python rarely returns memory, so RSS is a ratchet: after the first half it
# may still creep (fragmentation, a late peak of queued work) but a leak grows
# with every record. Allowed growth over the second half: this much, or...
RSS_GROWTH_ALLOWANCE_MB = 24.0
RSS_GROWTH_ALLOWANCE_FRACTION = 0.10  # ...this fraction of the midpoint, if larger


def domain_name(i: int) -> str:
    return f"soak{i}.test"


@dataclass(frozen=True)
class Plan:
    """The records of one soak: `records` regular ones over `domains` domains,
    the first `limited` of them rate-limited, plus the poison records."""

    records: int
    domains: int
    limited: int

    @property
    def domain_names(self) -> list[str]:
        return [domain_name(i) for i in range(self.domains)]

    @property
    def limited_domains(self) -> list[str]:
        return self.domain_names[: self.limited]

    def recipient(self, i: int) -> str:
        domain = domain_name(i % self.domains)
        if i and i % BOUNCE_EVERY == 0:
            return f"bounce{i}@{domain}"
        if i and i % GREYLIST_EVERY == 0:
            return f"grey{i}@{domain}"
        if i and i % SUPPRESS_EVERY == 0:
            return f"suppressed{i}@{domain}"
        return f"u{i}@{domain}"

    def record_id(self, i: int) -> str:
        return f"soak-{i}"

    def suppressed(self) -> list[str]:
        return [self.recipient(i) for i in range(self.records) if self.is_suppressed(i)]

    def is_suppressed(self, i: int) -> bool:
        return self.recipient(i).startswith("suppressed")

    def poison_positions(self) -> dict[int, list[str]]:
        """Regular-record index -> poison kinds produced just before it."""
        kinds = [*DLQ_POISON, "far_future", *(f"bad_domain_{n}" for n in range(len(BAD_DOMAINS)))]
        slots = POISON_COPIES * len(kinds)
        out: dict[int, list[str]] = {}
        for n in range(slots):
            # spread over the stream, never at its very start or end
            out.setdefault((n + 1) * self.records // (slots + 1), []).append(kinds[n % len(kinds)])
        return out

    def expected(self) -> Counter[str]:
        """Final dispositions the soak must end with, per kind of outcome."""
        want: Counter[str] = Counter()
        for i in range(self.records):
            r = self.recipient(i)
            want["suppressed" if r.startswith("suppressed") else "delivered"] += 1
            if r.startswith("bounce"):
                want["delivered"] -= 1
                want["bounced"] += 1
        for kinds in self.poison_positions().values():
            for kind in kinds:
                want["bounced" if kind.startswith("bad_domain") else "dlq"] += 1
        return +want

    @property
    def produced(self) -> int:
        return self.records + sum(len(k) for k in self.poison_positions().values())


@dataclass
class Tally:
    """Events, DLQ copies and receiver counts folded into dispositions."""

    finals: dict[str, list[str]] = field(default_factory=dict)  # message id -> final dispositions
    deferred: int = 0
    events: int = 0
    dlq_reasons: list[str] = field(default_factory=list)
    dlq_failed_ids: set[str] = field(default_factory=set)  # "failed" events also copied to the DLQ
    event_times: dict[str, list[float]] = field(default_factory=dict)  # domain -> delivered at

    def add_event(self, event: dict[str, Any]) -> None:
        self.events += 1
        disposition = str(event.get("disposition"))
        if disposition == "deferred":
            self.deferred += 1
            return
        self.finals.setdefault(str(event.get("message_id")), []).append(disposition)
        if disposition == "delivered":
            domain = str(event.get("domain"))
            self.event_times.setdefault(domain, []).append(float(event.get("time", 0.0)))

    def add_dlq(self, copy: dict[str, Any]) -> None:
        self.dlq_reasons.append(str(copy.get("reason") or ""))

    @property
    def accounted(self) -> int:
        """Records with a final disposition: one per id with a final event, plus
        DLQ copies of records that never decoded (a "failed" record has both)."""
        failed = sum(1 for d in self.finals.values() if "failed" in d)
        return len(self.finals) + len(self.dlq_reasons) - failed

    def dispositions(self) -> Counter[str]:
        """The first final disposition of each record, and `dlq` for DLQ copies."""
        got: Counter[str] = Counter(d[0] for d in self.finals.values())
        got.pop("failed", None)  # its DLQ copy counts it, once
        got["dlq"] = len(self.dlq_reasons)
        return +got  # without zero counts, as `Plan.expected` has none

    def duplicate_events(self) -> int:
        """Records with more than one final event."""
        return sum(1 for d in self.finals.values() if len(d) > 1)


def duplicate_receipts(received: Counter[str]) -> int:
    """Recipients a receiver accepted more than once (each one is unique)."""
    return sum(n - 1 for n in received.values() if n > 1)


RATE_WINDOW_SECONDS = 60.0  # "messages per minute" as a receiver counts them


def max_per_window(times: list[float], window: float = RATE_WINDOW_SECONDS) -> int:
    """The most arrivals in any `window` seconds (a sliding window over the arrivals).

    Not (n - 1) / span over a short stretch: the token bucket keeps each send at
    or after its slot, but on a busy event loop several late senders wake
    together, so seconds-long stretches run fast while every minute holds."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        most = max(most, end - start + 1)
    return most


def observed_rate_per_minute(times: list[float]) -> float | None:
    """Messages per minute between the first and the last arrival, or None."""
    ordered = sorted(times)
    if len(ordered) < 2:
        return None
    span = ordered[-1] - ordered[0]
    return (len(ordered) - 1) / span * 60 if span > 0 else math.inf


@dataclass(frozen=True)
class RSSVerdict:
    min_mb: float
    max_mb: float
    midpoint_mb: float
    end_mb: float
    second_half_growth_mb: float
    allowed_growth_mb: float

    @property
    def within_ceiling(self) -> bool:
        return self.max_mb <= RSS_CEILING_MB

    @property
    def steady(self) -> bool:
        return self.second_half_growth_mb <= self.allowed_growth_mb


def rss_verdict(curve: list[tuple[float, float]]) -> RSSVerdict:
    """Ceiling and second-half growth of one relay's (seconds, MiB) curve.

    Growth is measured between the highest RSS of the middle tenth and the
    highest of the last tenth: single samples are noisy, a leak is not."""
    values = [mb for _, mb in curve if mb > 0] or [0.0]
    n = len(values)
    tenth = max(1, n // 10)
    mid = max(values[max(0, n // 2 - tenth // 2) : n // 2 + tenth // 2 + 1])
    end = max(values[-tenth:])
    return RSSVerdict(
        min_mb=round(min(values), 1),
        max_mb=round(max(values), 1),
        midpoint_mb=round(mid, 1),
        end_mb=round(end, 1),
        second_half_growth_mb=round(end - mid, 1),
        allowed_growth_mb=round(
            max(RSS_GROWTH_ALLOWANCE_MB, mid * RSS_GROWTH_ALLOWANCE_FRACTION), 1
        ),
    )
