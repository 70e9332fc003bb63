"""Prometheus metrics of one relay, on an explicit registry (tests stay isolated).

Per-message paths touch metrics thousands of times a second, so label
children are looked up once and kept (`prometheus_client`'s `labels()`
validates and locks on every call), and the ready-queue depth is read from
the engine's queues when scraped instead of being set on every change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _QueueDepths(Collector):
    """mailpipe_ready_queue_depth, read from the engine at scrape time."""

    def __init__(self) -> None:
        self.read: Callable[[], dict[str, int]] = dict

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "mailpipe_ready_queue_depth", "Records waiting per domain", labels=["domain"]
        )
        for domain, depth in sorted(self.read().items()):
            family.add_metric([domain], depth)
        yield family


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
        self.queue_depths = _QueueDepths()
        r.register(self.queue_depths)
        self._delivered: dict[tuple[str, str, str], Counter] = {}
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

    def delivered(self, outcome: str, domain: str, egress_ip: str) -> None:
        key = (outcome, domain, egress_ip)
        child = self._delivered.get(key)
        if child is None:
            child = self._delivered[key] = self.deliveries.labels(outcome, domain, egress_ip)
        child.inc()
