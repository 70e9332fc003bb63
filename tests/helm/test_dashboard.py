"""Every panel of the chart's Grafana dashboard is backed by a metric the code exports.

The exported names come from the metric objects themselves (instantiated in a
fresh registry and collected), not from a list kept by hand, so renaming or
removing a metric fails here until the dashboard follows. A metric that is
declared but never written would still leave its panel empty, so the second
test asks that the code also writes each queried metric somewhere.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mailpipe.inbound import feedback, submission, unsubscribe
from mailpipe.inbound.feedback_server import FeedbackMetrics
from mailpipe.operator import metrics as operator_metrics
from mailpipe.relay import metrics as relay_metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "mailpipe" / "dashboards" / "mailpipe.json"
RELAY_SOURCES = ROOT / "relay" / "mailpipe" / "relay"
OPERATOR_SOURCES = ROOT / "operator" / "mailpipe" / "operator"
INBOUND_SOURCES = ROOT / "relay" / "mailpipe" / "inbound"
# Every process that exports metrics (relay, operator, and each inbound endpoint
# the operator runs for a pool): its metrics object made in a registry, and the
# sources that must write its metrics. `test_every_declared_metric_has_an_exporter`
# keeps this list whole.
EXPORTERS: dict[str, Callable[[CollectorRegistry], object]] = {
    "relay": relay_metrics.RelayMetrics,
    "operator": operator_metrics.OperatorMetrics,
    "feedback": FeedbackMetrics,
    "unsubscribe": unsubscribe.Metrics.create,
    "submission": submission.SubmissionMetrics,
}
SOURCES = {
    "relay": RELAY_SOURCES,
    "operator": OPERATOR_SOURCES,
    "feedback": INBOUND_SOURCES,
    "unsubscribe": INBOUND_SOURCES,
    "submission": INBOUND_SOURCES,
}
ENDPOINTS = ("feedback", "unsubscribe", "submission")
# The words an endpoint's counter labels can hold, from the code's own
# declarations: a panel filtering on another word would stay empty.
LABEL_WORDS: dict[tuple[str, str], set[str]] = {
    ("mailpipe_feedback_messages_total", "kind"): {k.value for k in feedback.Kind},
    ("mailpipe_unsubscribe_requests_total", "outcome"): set(unsubscribe.OUTCOMES),
    ("mailpipe_submission_refused_total", "reason"): set(submission.REFUSAL_REASONS),
    ("mailpipe_submission_messages_total", "outcome"): set(submission.MESSAGE_OUTCOMES),
    ("mailpipe_submission_logins_total", "result"): set(submission.LOGIN_RESULTS),
}
# Operator families without a `pool` label (per namespace only). Relay series get
# `namespace` and `pool` from the ServiceMonitor (Prometheus' target namespace and
# a relabeling of the relay Service's mailpipe.io/pool label).
WITHOUT_POOL = {"mailpipe_operator_campaigns", "mailpipe_operator_reconciles_total"}
VARIABLES = {"datasource", "namespace", "pool"}

# The series a metric family of each type exposes (Prometheus / OpenMetrics text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}

# PromQL words that are not metric names.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "atan2"}
_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords removed)."""
    expr = _STRINGS.sub(" ", expr)
    expr = _MATCHERS.sub(" ", expr)
    expr = _RANGES.sub(" ", expr)
    expr = _GROUPING.sub(" ", expr)
    names = set()
    for name, call in _IDENTIFIER.findall(expr):
        if not call and name not in _KEYWORDS:
            names.add(name)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("sum by (outcome) (rate(mailpipe_deliveries_total[5m]))", {"mailpipe_deliveries_total"}),
        ('topk(10, x_total{outcome="delivered", a=~"b"}[1m])', {"x_total"}),
        ("a / on(job) group_left(x) b offset 5m > bool 0.5", {"a", "b"}),
        ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))", {"h_bucket"}),
    ],
    ids=["aggregation", "matchers", "binary", "grafana-variable"],
)
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest their panels


def queried() -> dict[str, set[str]]:
    """Panel title -> the metric names its queries select."""
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        panel["title"]: set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
        for panel in _panels(dashboard["panels"])
        if panel.get("targets")
    }


def exported(names: Iterator[str] | tuple[str, ...] | None = None) -> dict[str, str]:
    """Exported series name -> its metric family, from the metric objects themselves
    (of the exporters `names`, default all)."""
    series = {}
    for name in names if names is not None else EXPORTERS:
        registry = CollectorRegistry()
        EXPORTERS[name](registry)
        for family in registry.collect():
            for suffix in SUFFIXES[family.type]:
                series[family.name + suffix] = family.name
    return series


def test_every_panel_queries_exported_metrics() -> None:
    panels = queried()
    assert panels, "the dashboard has no queries"
    known = exported()
    missing = {title: sorted(n - set(known)) for title, n in panels.items() if n - set(known)}
    assert missing == {}, f"panels query metrics the code does not export: {missing}"


def _written_attributes(sources: Path) -> set[str]:
    """Attribute names the code reads somewhere (`x.warmup_remaining.set(...)`,
    `self.deliveries.labels(...)`); assigning the metric object is not a write."""
    read = set()
    for path in sources.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                read.add(node.attr)
    return read


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_every_queried_metric_is_written_by_its_exporter(exporter: str) -> None:
    """A declared metric nobody sets exports no series: its panel stays empty."""
    registry = CollectorRegistry()
    metrics = EXPORTERS[exporter](registry)
    family_of_attribute = {}
    for attribute, value in vars(metrics).items():
        for family in getattr(value, "collect", lambda: [])():
            family_of_attribute[family.name] = attribute
    known = exported()
    used = _written_attributes(SOURCES[exporter])
    unwritten = {
        title: sorted(
            name
            for name in names
            if known.get(name, "") in family_of_attribute
            and family_of_attribute[known[name]] not in used
        )
        for title, names in queried().items()
    }
    unwritten = {title: names for title, names in unwritten.items() if names}
    assert unwritten == {}, f"panels query metrics the code never writes: {unwritten}"


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def test_the_dashboard_has_datasource_namespace_and_pool_variables() -> None:
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert set(variables) >= VARIABLES
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    known = exported()
    for name in ("namespace", "pool"):
        v = variables[name]
        assert v["datasource"]["uid"] == "${datasource}", name
        query = v["query"]["query"]
        assert query.startswith("label_values(") and query.rstrip(")").endswith(name), query
        selector = query.removeprefix("label_values(").rsplit(",", 1)[0]
        assert metric_names(selector) <= set(known), query
    assert "$namespace" in variables["pool"]["query"]["query"]  # pools of the chosen namespaces


def _selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, its matchers) for every metric a PromQL expression selects."""
    out = []
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", expr):
        if m[1] in metric_names(expr):
            out.append((m[1], m[2] or ""))
    return out


def test_every_panel_follows_the_variables() -> None:
    """Every panel reads the chosen data source, and every series it selects is
    filtered by the chosen namespaces (and pools, where the series has a pool)."""
    unfiltered = []
    for panel in _panels(_dashboard()["panels"]):
        if not panel.get("targets"):
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            for name, matchers in _selectors(target["expr"]):
                wanted = ['namespace=~"$namespace"']
                if name not in WITHOUT_POOL:
                    wanted.append('pool=~"$pool"')
                if not all(w in matchers for w in wanted):
                    unfiltered.append(f"{panel['title']}: {name}{matchers}")
    assert unfiltered == []


_DECLARED = re.compile(r"\b(?:Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*\"(mailpipe_\w+)\"")


def test_every_declared_metric_has_an_exporter() -> None:
    """A metric declared anywhere in the code belongs to an exporter this test
    knows, so a new endpoint's metrics are checked too (and a panel naming a
    metric no process exports fails above)."""
    declared = set()
    for root in (RELAY_SOURCES, OPERATOR_SOURCES, INBOUND_SOURCES):
        for path in root.rglob("*.py"):
            declared |= set(_DECLARED.findall(path.read_text()))
    assert "mailpipe_submission_refused" in declared  # the scan sees the endpoints
    families = set(exported().values())
    assert sorted(declared - families) == []


def test_each_endpoint_shows_what_it_accepted_refused_and_could_not_parse() -> None:
    """Issue 20's wiring: per endpoint, panels for accepted, refused by reason and
    parse failures, each selecting that endpoint's own series."""
    panels = queried()
    for endpoint in ENDPOINTS:
        own = set(exported((endpoint,)))
        for topic in ("accepted", "refused by reason", "parse failures"):
            [title] = [t for t in panels if t.startswith("Inbound") and topic in t]
            assert panels[title] & own, f"{title!r} shows nothing of the {endpoint} endpoint"


_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def test_panels_filter_only_on_words_the_endpoints_write() -> None:
    wrong = []
    for panel in _panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            for name, matchers in _selectors(target["expr"]):
                for label, _, value in _MATCHER.findall(matchers):
                    words = LABEL_WORDS.get((name, label))
                    if words is not None and set(value.split("|")) - words:
                        wrong.append(f"{panel['title']}: {name} {label}={value!r}")
    assert wrong == []


def test_the_endpoints_service_monitor_scrapes_every_endpoint_service() -> None:
    """The operator's endpoint Services carry what the chart's ServiceMonitor selects:
    its labels and a port named as the monitor's endpoint says."""
    from mailpipe.operator.models import SendingPoolSpec
    from mailpipe.operator.pool import PoolRef, build_children

    template = (ROOT / "helm" / "mailpipe" / "templates" / "servicemonitor.yaml").read_text()
    monitor = template.split("---")[1]  # the endpoints' ServiceMonitor
    assert "-endpoints" in monitor
    values = re.search(r"values: \[([^\]]*)\]", monitor)
    assert values is not None
    components = {v.strip() for v in values[1].split(",")}
    spec = SendingPoolSpec.model_validate(
        {
            "kafka": {"bootstrapServers": "kafka:9092"},
            "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
            "feedback": {"bounceDomain": "b.example.com", "keySecretRef": {"name": "k"}},
            "unsubscribe": {"baseUrl": "https://u.example.com/u/", "keySecret": "k"},
            "submission": {"hostname": "s.example.com", "tlsSecret": "t", "usersSecret": "u"},
        }
    )
    _, children = build_children(PoolRef("news", "mail", "uid"), spec)
    services = [c for c in children if c["kind"] == "Service"]
    endpoints = {
        s["metadata"]["labels"]["app.kubernetes.io/component"]: s
        for s in services
        if s["metadata"]["labels"]["app.kubernetes.io/component"] != "relay"
    }
    assert set(endpoints) == components == set(ENDPOINTS)
    for service in endpoints.values():
        labels = service["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "mailpipe-operator"
        assert "mailpipe.io/pool" in labels  # the `pool` label of its series
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
