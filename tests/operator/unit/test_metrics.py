"""The operator's metrics: kopf's handler outcomes counted, campaign and pool state exposed."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mailpipe.operator.metrics import (
    FAILED,
    RETRY,
    SUCCEEDED,
    CampaignState,
    HandlerOutcomes,
    OperatorMetrics,
    handler_outcome,
)


@pytest.mark.parametrize(
    ("message", "outcome"),
    [
        ("Handler 'reconcile_pool' succeeded.", ("reconcile_pool", SUCCEEDED)),
        ("Timer 'campaign_status' succeeded.", ("campaign_status", SUCCEEDED)),
        (
            "Handler 'reconcile_pool' failed temporarily: cannot create topics",
            ("reconcile_pool", RETRY),
        ),
        (
            "Handler 'reconcile_pool' failed permanently: spec.kafka: bad",
            ("reconcile_pool", FAILED),
        ),
        (
            "Handler 'suspend_changed/spec.suspend' failed with an exception and will try "
            "again in 60 seconds: boom",
            ("suspend_changed/spec.suspend", RETRY),
        ),
        (
            "Daemon 'fanout' failed with an exception and will stop now: boom",
            ("fanout", FAILED),
        ),
        ("Handler 'reconcile_pool' is invoked.", None),
        ("Adding the finalizer, thus preventing the actual deletion.", None),
    ],
)
def test_handler_outcome_of_kopf_log_lines(message: str, outcome: tuple[str, str] | None) -> None:
    assert handler_outcome(message) == outcome


def test_outcomes_are_counted_by_kind_namespace_handler_and_outcome() -> None:
    metrics = OperatorMetrics(CollectorRegistry())
    counter = HandlerOutcomes(metrics)
    ref = {"kind": "SendingPool", "namespace": "mail", "name": "marketing"}
    for msg in (
        "Handler 'reconcile_pool' succeeded.",
        "Handler 'reconcile_pool' failed temporarily: x",
    ):
        record = logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, msg, None, None)
        record.k8s_ref = ref
        counter.emit(record)
    text = generate_latest(metrics.registry).decode()
    assert (
        'mailpipe_operator_reconciles_total{handler="reconcile_pool",kind="SendingPool",'
        'namespace="mail",outcome="succeeded"} 1.0' in text
    )
    assert 'outcome="retry"} 1.0' in text


def test_campaign_phases_per_namespace_and_fanout_progress() -> None:
    metrics = OperatorMetrics(CollectorRegistry())
    body = {
        "spec": {"poolRef": "marketing"},
        "status": {
            "phase": "Sending",
            "fanout": {"state": "running", "enqueued": 40, "total": 100},
        },
    }
    metrics.state.put_campaign("mail", "a", CampaignState.from_body(body))
    metrics.state.put_campaign("mail", "b", CampaignState.from_body(body))
    metrics.state.put_campaign("news", "c", CampaignState.from_body({"spec": {"poolRef": "p"}}))
    metrics.state.put_pool("mail", "marketing", True)
    text = generate_latest(metrics.registry).decode()
    assert 'mailpipe_operator_campaigns{namespace="mail",phase="Sending"} 2.0' in text
    assert 'mailpipe_operator_campaigns{namespace="news",phase="Unknown"} 1.0' in text
    assert (
        'mailpipe_operator_fanout_enqueued_records{campaign="a",namespace="mail",pool="marketing"}'
        " 40.0" in text
    )
    assert 'mailpipe_operator_pool_ready{namespace="mail",pool="marketing"} 1.0' in text
    metrics.state.put_campaign("mail", "a", None)  # deleted: its series go
    text = generate_latest(metrics.registry).decode()
    assert 'mailpipe_operator_campaigns{namespace="mail",phase="Sending"} 1.0' in text
    assert 'campaign="a"' not in text
