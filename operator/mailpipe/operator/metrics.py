"""The operator's own Prometheus metrics: reconciles, errors, fan-out progress, campaign phases.

Two sources, so that no handler module carries metric code:

- Handler outcomes. kopf reports every run of every handler through its
  per-object logger ("Handler 'reconcile_pool' succeeded.", "... failed
  temporarily: ...", "... failed permanently: ...", "... failed with an
  exception ..."), the very lines it posts as the object's Events.
  `HandlerOutcomes`, a logging handler, counts them by kind, handler and
  outcome: `mailpipe_operator_reconciles_total`; any outcome but `succeeded`
  is an error (`retry`: kopf runs it again; `failed`: it gives up).
- Object state. Watch-event handlers (`kopf.on.event`) keep each Campaign's
  phase and fan-out progress and each SendingPool's readiness from their
  status; collectors expose them at scrape time, per namespace, so a deleted
  object's series disappear with it.

`serve` exposes the registry on `/metrics` through the project's bounded
scrape endpoint (`mailpipe.endpoints`: fixed paths, capped connections, no
thread per client), started on kopf's event loop once the operator starts.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mailpipe.endpoints import ScrapeEndpoint

from .models import GROUP, VERSION
from .progress import FanoutCheckpoint

# kopf's wording of a handler's end (kopf/_core/actions/execution.py); the
# subject is "Handler", "Timer" or "Daemon" followed by the handler id.
_OUTCOME = re.compile(
    r"^(?:Handler|Timer|Daemon) '(?P<handler>[^']+)' "
    r"(?:(?P<ok>succeeded)\.|"
    r"failed (?P<how>temporarily|permanently|with an exception)(?P<rest>.*))",
    re.DOTALL,
)
SUCCEEDED, RETRY, FAILED = "succeeded", "retry", "failed"
# The operator's pod has a network namespace of its own (no hostNetwork, unlike
# the relays): every address of it is the pod's.
METRICS_HOST = "0.0.0.0"
# Phase of a campaign the operator has not reported on yet (status.phase unset).
UNREPORTED_PHASE = "Unknown"


def handler_outcome(message: str) -> tuple[str, str] | None:
    """(handler id, outcome) of one kopf log line, or None if it is no handler's end."""
    m = _OUTCOME.match(message)
    if m is None:
        return None
    if m["ok"]:
        return m["handler"], SUCCEEDED
    if m["how"] == "temporarily" or "will try again" in m["rest"] or "will ignore" in m["rest"]:
        return m["handler"], RETRY
    return m["handler"], FAILED


@dataclass(frozen=True)
class CampaignState:
    """What the metrics show of one Campaign, from its status."""

    pool: str
    phase: str
    enqueued: int
    total: int

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> CampaignState:
        status = body.get("status") or {}
        fanout = FanoutCheckpoint.from_status(status)
        return cls(
            pool=str((body.get("spec") or {}).get("poolRef", "")),
            phase=str(status.get("phase") or UNREPORTED_PHASE),
            enqueued=fanout.enqueued,
            total=fanout.total,
        )


def pool_ready(body: Mapping[str, Any]) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class _StateCollector(Collector):
    """Gauges computed at scrape time from the last seen status of every object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # events arrive on the loop, scrapes on the server thread
        self.campaigns: dict[tuple[str, str], CampaignState] = {}
        self.pools: dict[tuple[str, str], bool] = {}

    def put_campaign(self, namespace: str, name: str, state: CampaignState | None) -> None:
        with self._lock:
            if state is None:
                self.campaigns.pop((namespace, name), None)
            else:
                self.campaigns[(namespace, name)] = state

    def put_pool(self, namespace: str, name: str, ready: bool | None) -> None:
        with self._lock:
            if ready is None:
                self.pools.pop((namespace, name), None)
            else:
                self.pools[(namespace, name)] = ready

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            campaigns = dict(self.campaigns)
            pools = dict(self.pools)
        phases = GaugeMetricFamily(
            "mailpipe_operator_campaigns",
            "Campaigns by namespace and phase",
            labels=["namespace", "phase"],
        )
        for (namespace, phase), n in sorted(
            Tally((ns, c.phase) for (ns, _), c in campaigns.items()).items()
        ):
            phases.add_metric([namespace, phase], n)
        enqueued = GaugeMetricFamily(
            "mailpipe_operator_fanout_enqueued_records",
            "Recipients of a campaign the fan-out has put on Kafka",
            labels=["namespace", "pool", "campaign"],
        )
        audience = GaugeMetricFamily(
            "mailpipe_operator_fanout_audience_records",
            "Recipients of a campaign's checked audience (the fan-out's total)",
            labels=["namespace", "pool", "campaign"],
        )
        for (namespace, name), c in sorted(campaigns.items()):
            enqueued.add_metric([namespace, c.pool, name], c.enqueued)
            audience.add_metric([namespace, c.pool, name], c.total)
        ready = GaugeMetricFamily(
            "mailpipe_operator_pool_ready",
            "1 if the SendingPool's Ready condition is True",
            labels=["namespace", "pool"],
        )
        for (namespace, name), ok in sorted(pools.items()):
            ready.add_metric([namespace, name], 1 if ok else 0)
        yield from (phases, enqueued, audience, ready)


class OperatorMetrics:
    """Every metric the operator exports, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "mailpipe_operator_reconciles",
            "Handler runs by kind, handler and outcome (succeeded, retry, failed)",
            ["kind", "namespace", "handler", "outcome"],
            registry=self.registry,
        )
        self.state = _StateCollector()
        self.registry.register(self.state)


class HandlerOutcomes(logging.Handler):
    """Counts kopf's handler-outcome log records into `reconciles`."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        super().__init__(level=logging.DEBUG)
        self.metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        outcome = handler_outcome(record.getMessage())
        if outcome is None:
            return
        ref = getattr(record, "k8s_ref", None) or {}
        self.metrics.reconciles.labels(
            kind=str(ref.get("kind") or ""),
            namespace=str(ref.get("namespace") or ""),
            handler=outcome[0],
            outcome=outcome[1],
        ).inc()


METRICS_MEMO_KEY = "mailpipe.metrics"  # the operator memo's key for its OperatorMetrics


def _metrics(memo: kopf.Memo) -> OperatorMetrics | None:
    """The operator's metrics `serve` put into its memo; None when not served."""
    metrics = memo.get(METRICS_MEMO_KEY)
    return metrics if isinstance(metrics, OperatorMetrics) else None


# async, so they run on the loop: a sync handler would wait for one of kopf's
# executor threads, which long fan-outs may hold, and delay its object's events.
@kopf.on.event(GROUP, VERSION, "campaigns")
async def campaign_seen(
    type: str | None,  # kopf's kwarg name
    body: Any,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    metrics = _metrics(memo)
    if metrics is None:
        return
    meta = body.get("metadata", {})
    state = None if type == "DELETED" else CampaignState.from_body(body)
    metrics.state.put_campaign(meta.get("namespace", ""), meta.get("name", ""), state)


@kopf.on.event(GROUP, VERSION, "sendingpools")
async def pool_seen(
    type: str | None,  # kopf's kwarg name
    body: Any,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    metrics = _metrics(memo)
    if metrics is None:
        return
    meta = body.get("metadata", {})
    ready = None if type == "DELETED" else pool_ready(body)
    metrics.state.put_pool(meta.get("namespace", ""), meta.get("name", ""), ready)


def serve(port: int, memo: kopf.Memo, host: str = METRICS_HOST) -> OperatorMetrics:
    """This operator's metrics, put into its `memo` (where the watch-event handlers
    find them): kopf's handler outcomes counted, /metrics on `port` once kopf's loop runs."""
    metrics = OperatorMetrics()
    memo[METRICS_MEMO_KEY] = metrics
    logging.getLogger("kopf.objects").addHandler(HandlerOutcomes(metrics))

    async def metrics_endpoint(**_: Any) -> None:
        await ScrapeEndpoint(metrics.registry, host, port).start()

    kopf.on.startup(id="metrics_endpoint")(metrics_endpoint)
    return metrics
