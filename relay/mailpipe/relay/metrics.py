"""Prometheus metrics of one relay, on an explicit registry (tests stay isolated)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.deliveries = Counter(
            "mailpipe_deliveries",
            "Recipient dispositions by outcome, destination domain and egress IP",
            ["outcome", "domain", "egress_ip"],
            registry=r,
        )
        self.backoffs = Counter(
            "mailpipe_backoffs",
            "Times a domain told an egress IP to slow down (421, 4.7.x, 5.7.x)",
            ["domain", "egress_ip", "reason"],
            registry=r,
        )
        self.ready_queue_depth = Gauge(
            "mailpipe_ready_queue_depth", "Records waiting per domain", ["domain"], registry=r
        )
        self.throttle_wait = Histogram(
            "mailpipe_throttle_wait_seconds",
            "Time a message waited for its domain's rate limit",
            ["domain"],
            buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60),
            registry=r,
        )
        self.warmup_remaining = Gauge(
            "mailpipe_warmup_budget_remaining",
            "Messages a warming IP may still send today (-1 = no cap)",
            ["egress_ip"],
            registry=r,
        )
        self.in_flight = Gauge(
            "mailpipe_in_flight_records", "Records read, not finished", registry=r
        )
        self.consumer_lag = Gauge(
            "mailpipe_consumer_lag",
            "Records behind the log end",
            ["topic", "partition"],
            registry=r,
        )
        self.overflow = Counter(
            "mailpipe_overflow_records",
            "Records moved to a delay topic because their domain's queue was full",
            ["domain"],
            registry=r,
        )
        self.dlq = Counter(
            "mailpipe_dlq_records", "Records sent to the DLQ", ["reason"], registry=r
        )
        self.duplicates_skipped = Counter(
            "mailpipe_duplicate_records",
            "Records seen again after a restart or rebalance",
            registry=r,
        )
