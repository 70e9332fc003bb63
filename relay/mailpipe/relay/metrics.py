"""Prometheus metrics of one relay, on an explicit registry (tests stay isolated).

Per-message paths touch metrics thousands of times a second, so label
children are looked up once and kept (`prometheus_client`'s `labels()`
validates and locks on every call), and gauges of state the engine keeps
anyway (ready-queue depths, warm-up budgets) are read from it when scraped
instead of being set on every change. `EXPORTED` lists every metric name a
scrape shows, for the test that each dashboard panel's query is backed.

Recipient domains come from the records, i.e. from whoever produces them, so
every `domain` label goes through `DomainLabels`: the shaping keys the pool
names keep their own label, then the first `limit` other domains seen, and
the rest share `OTHER_DOMAINS`. The number of series is bounded by the
config, not by the audience.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mailpipe.contracts.tls_outcome import TLSOutcome

OTHER_DOMAINS = "other"  # the label of every domain past the limit
DEFAULT_DOMAIN_LABELS = 50  # RelayConfig.metrics_domain_labels' default
REMEMBERED_OTHERS = 10_000  # cache of 'other' verdicts: a hot domain skips the group match


class DomainLabels:
    """Maps a recipient domain to a bounded set of label values (see module doc)."""

    def __init__(
        self, named: Callable[[str], str | None] | None = None, limit: int = DEFAULT_DOMAIN_LABELS
    ) -> None:
        self._named = named or (lambda _domain: None)
        self._limit = limit
        self._seen: dict[str, str] = {}
        self._own_labels = 0  # domains past this many share OTHER_DOMAINS

    def __call__(self, domain: str) -> str:
        label = self._seen.get(domain)
        if label is not None:
            return label
        label = self._named(domain)
        if label is None:
            if self._own_labels < self._limit:
                self._own_labels += 1
                label = domain
            else:
                label = OTHER_DOMAINS
        if label != OTHER_DOMAINS or len(self._seen) < REMEMBERED_OTHERS + self._limit:
            self._seen[domain] = label  # bounded: `limit` own labels plus some others
        return label


class _DomainLabelled:
    """A labelled metric whose first label is a domain, passed through DomainLabels."""

    def __init__(self, metric: Any, labels: DomainLabels) -> None:
        self._metric, self._labels = metric, labels
        # Children by their label values: prometheus_client's `labels()` takes a
        # lock and rebuilds its key on every call, about 2% of the relay's CPU
        # per message for the metrics touched per message. Bounded as the
        # series are (the domain label set is).
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, domain: str, *rest: str) -> Any:
        key = (self._labels(domain), *rest)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metric.labels(*key)
        return child


class _ScrapedGauge(Collector):
    """A labelled gauge whose values are read from the engine at scrape time."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        relabel: Callable[[str], str] = lambda key: key,
    ) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.read: Callable[[], dict[str, int]] = dict
        self.relabel = relabel

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=[self.label])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=[self.label])
        totals: dict[str, int] = {}
        for key, value in self.read().items():
            label = self.relabel(key)
            totals[label] = totals.get(label, 0) + value
        for label, value in sorted(totals.items()):
            family.add_metric([label], value)
        yield family


# From "barely waited" to "a whole minute": the range of 1 to 6000 messages per minute.
THROTTLE_WAIT_BUCKETS_SECONDS = (0.01, 0.1, 0.5, 1, 5, 15, 60)
NO_CAP = -1  # mailpipe_warmup_budget_remaining of an IP that is warm (no daily cap)

# Every metric family a scrape shows (counters add `_total`, histograms
# `_bucket`/`_sum`/`_count`), for the dashboard test.
EXPORTED = (
    "mailpipe_deliveries_total",
    "mailpipe_backoffs_total",
    "mailpipe_site_actions_total",
    "mailpipe_site_suspensions_active",
    "mailpipe_ready_queue_depth",
    "mailpipe_throttle_wait_seconds",
    "mailpipe_warmup_budget_remaining",
    "mailpipe_in_flight_records",
    "mailpipe_suppressions_held",
    "mailpipe_consumer_lag",
    "mailpipe_postponed_records_total",
    "mailpipe_dlq_records_total",
    "mailpipe_followed_bad_records_total",
    "mailpipe_consumer_errors_total",
    "mailpipe_already_finished_records_total",
    "mailpipe_config_refused_total",
    "mailpipe_tls_attempts_total",
    "mailpipe_smtp_connections_closed_total",
)


class RelayMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, domains: DomainLabels | None = None
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.domains = domains or DomainLabels()
        r = self.registry
        self.deliveries = Counter(
            "mailpipe_deliveries",
            "Recipient dispositions by outcome, destination domain and egress IP",
            ["outcome", "domain", "egress_ip"],
            registry=r,
        )
        self.backoffs = _DomainLabelled(
            Counter(
                "mailpipe_backoffs",
                "Replies whose bounce rule asked the egress IP to stop or slow down for the"
                " domain's site, by the action asked (suspend, slow)",
                ["domain", "egress_ip", "reason"],
                registry=r,
            ),
            self.domains,
        )
        self.site_actions = _DomainLabelled(
            Counter(
                "mailpipe_site_actions",
                "Site actions this relay decided from a reply (a bounce rule's suspend or slow"
                " of the site for the egress IP), held by every relay of the pool",
                ["site", "ip", "action"],
                registry=r,
            ),
            self.domains,
        )
        self.suspensions_active = Gauge(
            "mailpipe_site_suspensions_active",
            "Sites suspended for an egress IP now, pool-wide as this relay holds them",
            registry=r,
        )
        self.queue_depths = _ScrapedGauge(
            "mailpipe_ready_queue_depth", "Records waiting per domain", "domain", self.domains
        )
        r.register(self.queue_depths)
        self._delivered: dict[tuple[str, str, str], Counter] = {}
        self.throttle_wait = _DomainLabelled(
            Histogram(
                "mailpipe_throttle_wait_seconds",
                "Time a message waited for its domain's rate limit",
                ["domain"],
                buckets=THROTTLE_WAIT_BUCKETS_SECONDS,
                registry=r,
            ),
            self.domains,
        )
        self.warmup_remaining = _ScrapedGauge(
            "mailpipe_warmup_budget_remaining",
            f"Messages an egress IP may still send today from this relay ({NO_CAP} = no cap)",
            "egress_ip",
        )
        r.register(self.warmup_remaining)
        self.in_flight = Gauge(
            "mailpipe_in_flight_records", "Records read, not finished", registry=r
        )
        # How far the relay's suppressions have come: an unsubscribe acknowledged
        # by Kafka stops this relay's sends once it is counted here.
        self.suppressions_held = Gauge(
            "mailpipe_suppressions_held",
            "Suppression entries this relay holds, from every topic it follows",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "mailpipe_consumer_lag",
            "Records behind the log end",
            ["topic", "partition"],
            registry=r,
        )
        self.postponed = _DomainLabelled(
            Counter(
                "mailpipe_postponed_records",
                "Records postponed to a delay topic, by destination domain and reason"
                " (retry, not_yet_due, queue_full, window_relief, campaign_paused, no_egress_ip)",
                ["domain", "reason"],
                registry=r,
            ),
            self.domains,
        )
        self.dlq = Counter(
            "mailpipe_dlq_records",
            "Records sent to the DLQ, by reason (undecodable, unrenderable, relay_error)",
            ["reason"],
            registry=r,
        )
        self.followed_bad = Counter(
            "mailpipe_followed_bad_records",
            "Undecodable records on a followed topic (suppressions, events, campaign control);"
            " a bad suppression still suppresses its key",
            ["topic"],
            registry=r,
        )
        self.consumer_errors = Counter(
            "mailpipe_consumer_errors",
            "Failures of the consumer thread to read (an undecodable or corrupt batch, a broker"
            " error), by error type; the thread retries, and /readyz says why it is not ready",
            ["error"],
            registry=r,
        )
        self.already_finished = Counter(
            "mailpipe_already_finished_records",
            "Records read again after a rebalance or an eviction and not sent again: this"
            " relay, or the partition's previous owner (commit metadata), had finished them",
            registry=r,
        )
        self.tls_attempts = _DomainLabelled(
            Counter(
                "mailpipe_tls_attempts",
                "Delivery attempts by the TLS of their connection: the mode applied, what the"
                " destination published (MTA-STS mode or absent), protocol or clear, verified,"
                " and why not (an RFC 8460 result type, or none)",
                ["domain", "mode", "policy", "protocol", "verified", "failure"],
                registry=r,
            ),
            self.domains,
        )
        self.connections_closed = Counter(
            "mailpipe_smtp_connections_closed",
            "Pooled SMTP connections that left the connection cache, by reason: idle or age"
            " (the destination's reuse limits), messages (messages per connection), lost"
            " (closed by the server; nothing to QUIT), shutdown; all but lost end with QUIT",
            ["reason"],
            registry=r,
        )
        self.config_refused = Counter(
            "mailpipe_config_refused",
            "Relay configs on disk refused and not used, by reason (untrusted: not signed by"
            " the operator, e.g. a ConfigMap edited by hand); /readyz says why meanwhile",
            ["reason"],
            registry=r,
        )

    def tls(self, domain: str, outcome: TLSOutcome) -> None:
        """One delivery attempt's TLS; every label but the domain is from a fixed set."""
        self.tls_attempts.labels(domain, *outcome.labels()).inc()

    def delivered(self, outcome: str, domain: str, egress_ip: str) -> None:
        key = (outcome, self.domains(domain), egress_ip)  # bounded, as the series are
        child = self._delivered.get(key)
        if child is None:
            child = self._delivered[key] = self.deliveries.labels(*key)
        child.inc()
