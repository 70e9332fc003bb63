"""`unpause-ip` lifts a pause, and only a pause (issue 18, 9).

Un-pausing writes an `IPUnpaused` record that starts the IP's bounce and
complaint rates afresh. Before: an IP that was not paused was accepted by the
plugin and the operator ("bounce and complaint rates start afresh"), silently
wiping that IP's history. Now the plugin refuses it, and so does the operator
for the annotation set by hand: no record is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from mailpipe.contracts.warmup import UNPAUSE_ANNOTATION
from mailpipe.contracts.wire import Disposition
from mailpipe.devstack.harness import Child, kubectl_ok
from mailpipe.kafkakit import read_topic
from tests.operator.integration.conftest import get, kubectl, wait_for, wait_pool_ready
from tests.operator.integration.test_warmup_scale import (
    IP,
    MIN_SAMPLE,
    STATUS_SECONDS,
    event,
    produce,
    warming_pool,
)

from .conftest import one_line_error, plugin

pytestmark = pytest.mark.operator

UNPAUSED_MARKER = b'"kind":"ip_unpaused"'  # how an IPUnpaused record reads on the topic


def _events(env: dict[str, str], namespace: str, reason: str) -> list[str]:
    listed = json.loads(
        kubectl_ok(
            env, "get", "events", "-n", namespace, f"--field-selector=reason={reason}", "-o", "json"
        )
    )
    return [e["message"] for e in listed["items"]]


def _annotated(env: dict[str, str], namespace: str) -> bool:
    pool = get(env, "sp", "news", namespace) or {}
    return UNPAUSE_ANNOTATION in (pool.get("metadata", {}).get("annotations") or {})


def _ips(env: dict[str, str], namespace: str) -> list[dict[str, Any]]:
    ips: list[dict[str, Any]] = (
        (get(env, "sp", "news", namespace) or {}).get("status", {}).get("ips")
    ) or []
    return ips


def _warming_pool_ready(
    operator_factory: Callable[..., Child],
    env: dict[str, str],
    namespace: str,
    bootstrap: str,
    prefix: str,
) -> Child:
    """An operator, and the warming pool "news" Ready under it."""
    op = operator_factory()
    kubectl_ok(env, "apply", "-f", "-", stdin=warming_pool(namespace, bootstrap, prefix))
    wait_pool_ready(env, namespace, op)
    return op


def test_an_ip_that_is_not_paused_is_refused_and_its_history_kept(
    operator_factory: Callable[..., Child],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = _warming_pool_ready(operator_factory, cli_env, namespace, kafka_bootstrap, topic_prefix)
    events = f"{topic_prefix}.events"
    # History the pause is judged on: bounces, not yet enough to pause.
    produce(kafka_bootstrap, events, [event(i, Disposition.BOUNCED) for i in range(MIN_SAMPLE - 1)])
    wait_for(
        lambda: any(i["address"] == IP for i in _ips(cli_env, namespace)),
        STATUS_SECONDS,
        "the operator to report the IP's warm-up",
        op,
    )

    out = plugin(cli_env, "unpause-ip", IP, "-n", namespace)
    assert out.returncode == 1, out.stdout
    error = one_line_error(out)
    assert f"{IP} is not paused" in error and "nothing to lift" in error
    assert not _annotated(cli_env, namespace), "refused: the pool is not annotated"

    # The annotation set by hand: the operator refuses it too, and says why.
    kubectl_ok(cli_env, "annotate", "sp", "news", "-n", namespace, f"{UNPAUSE_ANNOTATION}={IP}")
    wait_for(
        lambda: (
            not _annotated(cli_env, namespace)
            and any("not paused" in m for m in _events(cli_env, namespace, "UnpauseRefused"))
        ),
        60,
        "the operator to refuse the un-pause of an IP that is not paused",
        op,
    )
    assert _events(cli_env, namespace, "IPUnpaused") == []
    records = [v for _, v in read_topic(kafka_bootstrap, events) if v is not None]
    assert not any(UNPAUSED_MARKER in v for v in records), "no un-pause record was written"

    # The history was kept: one more bounce pauses the IP.
    produce(kafka_bootstrap, events, [event(100, Disposition.BOUNCED)])
    wait_for(
        lambda: any(i.get("pausedReason") for i in _ips(cli_env, namespace)),
        STATUS_SECONDS,
        "the IP paused by its kept history plus one bounce",
        op,
    )


def test_a_paused_ip_is_lifted_with_the_plugin(
    operator_factory: Callable[..., Child],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = _warming_pool_ready(operator_factory, cli_env, namespace, kafka_bootstrap, topic_prefix)
    produce(
        kafka_bootstrap,
        f"{topic_prefix}.events",
        [event(i, Disposition.BOUNCED) for i in range(MIN_SAMPLE)],
    )
    wait_for(
        lambda: any(i.get("pausedReason") for i in _ips(cli_env, namespace)),
        STATUS_SECONDS,
        "the IP paused",
        op,
    )
    out = plugin(cli_env, "unpause-ip", IP, "--pool", "news", "-n", namespace)
    assert out.returncode == 0, out.stderr
    assert f"{IP} was paused: bounce rate" in out.stdout

    # The operator reads it: writes the un-pause to the events topic (an
    # IPUnpaused Event says so), then removes the annotation.
    def consumed() -> bool:
        events = kubectl(
            cli_env, "get", "events", "-n", namespace, "--field-selector", "reason=IPUnpaused"
        ).stdout
        return not _annotated(cli_env, namespace) and IP in events

    wait_for(consumed, 60, "the operator to consume the un-pause annotation", op)
    out = plugin(cli_env, "unpause-ip", "127.0.0.9", "--pool", "news", "-n", namespace)
    assert out.returncode == 2 and "not an egress IP of sendingpool news" in one_line_error(out)
