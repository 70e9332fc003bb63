"""The soak's report: the figures `make bench-soak` writes and the test asserts, and
`problems()`, every promise the run broke (empty when it kept them all)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .soak_model import RSS_CEILING_MB


@dataclass
class SoakReport:
    """What one soak run showed; `problems()` lists every broken promise."""

    records: int
    produced: int
    domains: int
    limited_domains: list[str]
    limit_per_minute: float
    limit_lanes: int  # the limited domains' max_connections: see RATE_TOLERANCE
    relays: int
    seconds: float = 0.0
    msgs_per_s: float = 0.0  # produced / seconds (the limited domains set the end)
    unlimited_msgs_per_s: float = 0.0  # deliveries to the other domains, first to last
    expected: dict[str, int] = field(default_factory=dict)
    dispositions: dict[str, int] = field(default_factory=dict)
    deferred_events: int = 0
    # records postponed to each delay topic (retries, full queues, window relief)
    delay_topic_records: dict[str, int] = field(default_factory=dict)
    duplicate_events: int = 0
    duplicate_receipts: int = 0
    delivered_without_receipt: int = 0
    receipts_without_event: int = 0
    dlq_reasons: list[str] = field(default_factory=list)
    # what each limited domain's receiver saw: the most in any minute (asserted), and
    # the mean rate from its first to its last message
    limited_max_per_minute: dict[str, int] = field(default_factory=dict)
    limited_rates_per_minute: dict[str, float | None] = field(default_factory=dict)
    final_lag: dict[str, int] = field(default_factory=dict)  # "topic/partition" -> lag
    uncommitted: list[str] = field(default_factory=list)  # partitions with records, no commit
    relay_exits: dict[str, int | None] = field(default_factory=dict)
    rss: dict[str, dict[str, Any]] = field(default_factory=dict)  # relay -> verdict + curve
    stalled: str | None = None  # why the run stopped before every record was accounted

    def problems(self) -> list[str]:
        found = []
        if self.stalled:
            found.append(f"stalled: {self.stalled}")
        if self.dispositions != self.expected:
            found.append(f"dispositions {self.dispositions} != expected {self.expected}")
        for name in ("duplicate_events", "duplicate_receipts"):
            if getattr(self, name):
                found.append(f"{name} = {getattr(self, name)}")
        if self.delivered_without_receipt or self.receipts_without_event:
            found.append(
                f"events and receivers disagree: {self.delivered_without_receipt} delivered "
                f"events without a receipt, {self.receipts_without_event} receipts without one"
            )
        if any(not r for r in self.dlq_reasons):
            found.append("a DLQ copy without a reason")
        lagging = {k: v for k, v in self.final_lag.items() if v}
        if lagging:
            found.append(f"consumer-group lag at the end: {lagging}")
        if self.uncommitted:
            found.append(f"partitions with records and no committed offset: {self.uncommitted}")
        allowed = self.limit_per_minute * RATE_TOLERANCE + self.limit_lanes + 1
        for domain, most in self.limited_max_per_minute.items():
            if most > allowed:
                found.append(
                    f"{domain}: {most} in one minute, over its limit {self.limit_per_minute}"
                )
        for relay, code in self.relay_exits.items():
            if code not in (0, None):
                found.append(f"{relay} exited with {code}")
        for relay, data in self.rss.items():
            if data["max_mb"] > RSS_CEILING_MB:
                found.append(f"{relay}: RSS {data['max_mb']} MiB over {RSS_CEILING_MB}")
            if data["second_half_growth_mb"] > data["allowed_growth_mb"]:
                found.append(
                    f"{relay}: RSS grew {data['second_half_growth_mb']} MiB in the second half "
                    f"(allowed {data['allowed_growth_mb']})"
                )
        return found

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# A receiver's count in any minute may exceed the limit by this fraction, plus
# one (the first send is free), plus one per lane of the domain: each lane
# (connection) reserves its rate token and then sends, and a send delayed after
# its slot (the first connection being set up, a busy event loop) lands in the
# next minute beside that minute's own sends. The soak on a loaded 2-core
# machine saw 127-129 in a minute at 120/min with 10 lanes. A limit not
# applied, or two relays sending for one domain, exceeds this by far.
RATE_TOLERANCE = 1.05
