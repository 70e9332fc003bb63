"""Prometheus metrics of one relay, on an explicit registry (tests stay isolated).

Per-message paths touch metrics thousands of times a second, so label
children are looked up once and kept (`prometheus_client`'s `labels()`
validates and locks on every call), and gauges of state the engine keeps
anyway (ready-queue depths, warm-up budgets) are read from it when scraped
instead of being set on every change. `EXPORTED` lists every metric name a
scrape shows, for the test that each dashboard panel's query is backed.
`serve` answers the probes (`/readyz`, `/healthz`, from `health.Health`) on
the metrics port beside `/metrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .health import Health

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], list[bytes]]


class _ScrapedGauge(Collector):
    """A labelled gauge whose values are read from the engine at scrape time."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.read: Callable[[], dict[str, int]] = dict

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=[self.label])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=[self.label])
        for key, value in sorted(self.read().items()):
            family.add_metric([key], value)
        yield family


# From "barely waited" to "a whole minute": the range of 1 to 6000 messages per minute.
THROTTLE_WAIT_BUCKETS_SECONDS = (0.01, 0.1, 0.5, 1, 5, 15, 60)
NO_CAP = -1  # mailpipe_warmup_budget_remaining of an IP that is warm (no daily cap)

# Every metric family a scrape shows (counters add `_total`, histograms
# `_bucket`/`_sum`/`_count`), for the dashboard test.
EXPORTED = (
    "mailpipe_deliveries_total",
    "mailpipe_backoffs_total",
    "mailpipe_ready_queue_depth",
    "mailpipe_throttle_wait_seconds",
    "mailpipe_warmup_budget_remaining",
    "mailpipe_in_flight_records",
    "mailpipe_consumer_lag",
    "mailpipe_postponed_records_total",
    "mailpipe_dlq_records_total",
    "mailpipe_followed_bad_records_total",
    "mailpipe_consumer_errors_total",
)


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
        self.queue_depths = _ScrapedGauge(
            "mailpipe_ready_queue_depth", "Records waiting per domain", "domain"
        )
        r.register(self.queue_depths)
        self._delivered: dict[tuple[str, str, str], Counter] = {}
        self.throttle_wait = Histogram(
            "mailpipe_throttle_wait_seconds",
            "Time a message waited for its domain's rate limit",
            ["domain"],
            buckets=THROTTLE_WAIT_BUCKETS_SECONDS,
            registry=r,
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
        self.consumer_lag = Gauge(
            "mailpipe_consumer_lag",
            "Records behind the log end",
            ["topic", "partition"],
            registry=r,
        )
        self.postponed = Counter(
            "mailpipe_postponed_records",
            "Records postponed to a delay topic, by destination domain and reason"
            " (retry, not_yet_due, queue_full, window_relief, campaign_paused, no_egress_ip)",
            ["domain", "reason"],
            registry=r,
        )
        self.dlq = Counter(
            "mailpipe_dlq_records", "Records sent to the DLQ", ["reason"], registry=r
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

    def delivered(self, outcome: str, domain: str, egress_ip: str) -> None:
        key = (outcome, domain, egress_ip)
        child = self._delivered.get(key)
        if child is None:
            child = self._delivered[key] = self.deliveries.labels(outcome, domain, egress_ip)
        child.inc()


class _QuietHandler(WSGIRequestHandler):
    """No access log: probes come every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _probe(reasons: Callable[[], list[str]]) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        failing = reasons()
        status = "503 Service Unavailable" if failing else "200 OK"
        body = "".join(f"{r}\n" for r in failing) if failing else "ok\n"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [body.encode()]

    return app


def serve(port: int, metrics: RelayMetrics, health: Health, host: str = "0.0.0.0") -> WSGIServer:
    """Serve /metrics, /readyz (readiness, with the reasons when false) and
    /healthz (liveness) on `port`, in a daemon thread; returns the server."""
    probes = {"/readyz": _probe(health.readiness), "/healthz": _probe(health.liveness)}
    scrape = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        probe = probes.get(environ.get("PATH_INFO", ""))
        return (probe or scrape)(environ, start_response)

    server = make_server(host, port, app, _Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
