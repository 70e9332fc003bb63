"""A pool's endpoints' availability shows in its status, apart from Ready, against the
real API server.

The dev stack runs no kubelet and no Deployment controller, so this test plays
them (`harness.report_deployment`) for the endpoint Deployments as the pool
status tests do for the relays: an unsubscribe endpoint that stops being
available makes EndpointsReady False naming it (and a Warning Event), while
Ready, which follows the relays that send mail, stays True.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from mailpipe.devstack import harness

from .conftest import OperatorProcess, get, kubectl, pool_manifest, relays_up, wait_for

pytestmark = pytest.mark.operator

STATUS_SECONDS = 60  # a Deployment event reaches the pool's status well within this, loaded
FEEDBACK = "mailpipe-feedback-news"
UNSUBSCRIBE = "mailpipe-unsubscribe-news"
ENDPOINTS = {
    "feedback": {"bounceDomain": "bounces.sender.test", "keySecretRef": {"name": "fb-keys"}},
    "unsubscribe": {"baseUrl": "https://unsub.sender.test/u/", "keySecret": "fb-keys"},
}


def _status(env: dict[str, str], namespace: str) -> dict[str, Any]:
    return dict((get(env, "sp", "news", namespace) or {}).get("status") or {})


def _said(env: dict[str, str], namespace: str, type_: str) -> tuple[str, str, str]:
    for c in _status(env, namespace).get("conditions") or []:
        if c.get("type") == type_:
            return c.get("status", ""), c.get("reason", ""), c.get("message", "")
    return "", "", ""


def _events(env: dict[str, str], namespace: str, type_: str = "Normal") -> list[str]:
    """The messages of the pool's Events of `type_`, each after its reason."""
    selector = f"involvedObject.name=news,type={type_}"
    out = kubectl(env, "get", "events", "-n", namespace, "--field-selector", selector, "-o", "json")
    return [f"{e['reason']}: {e['message']}" for e in json.loads(out.stdout)["items"]]


def test_an_unavailable_endpoint_shows_in_the_pool_status_and_ready_stays_the_relays(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    env = cli_env
    op = operator_factory()
    secret = kubectl(
        env,
        "create",
        "secret",
        "generic",
        "fb-keys",
        "-n",
        namespace,
        "--from-literal=ka=" + "k" * 32,
    )
    assert secret.returncode == 0, secret.stderr

    def apply(**spec: object) -> None:
        manifest = pool_manifest("news", namespace, kafka_bootstrap, topic_prefix, **spec)
        done = kubectl(env, "apply", "-f", "-", stdin=manifest)
        assert done.returncode == 0, done.stderr

    def until(type_: str, status: str, reason: str) -> str:
        wait_for(
            lambda: _said(env, namespace, type_)[:2] == (status, reason),
            STATUS_SECONDS,
            f"{type_}={status} ({reason})",
            op,
        )
        return _said(env, namespace, type_)[2]

    apply(**ENDPOINTS)
    relays_up(env, namespace, op)
    until("Ready", "True", "RelaysAvailable")
    # the endpoints are rendered but none runs yet
    message = until("EndpointsReady", "False", "EndpointsUnavailable")
    assert message == "not available: feedback 0/1, unsubscribe 0/1"

    for name in (FEEDBACK, UNSUBSCRIBE):
        harness.report_deployment(env, namespace, name)
    message = until("EndpointsReady", "True", "EndpointsAvailable")
    assert message == "feedback 1/1, unsubscribe 1/1 available"
    assert _status(env, namespace)["endpoints"] == {
        "feedback": {"desired": 1, "available": 1},
        "unsubscribe": {"desired": 1, "available": 1},
    }

    # the unsubscribe endpoint crashes: its own condition says so, Ready does not
    harness.report_deployment(env, namespace, UNSUBSCRIBE, available=0)
    message = until("EndpointsReady", "False", "UnsubscribeUnavailable")
    assert message == "not available: unsubscribe 0/1; available: feedback 1/1"
    assert _said(env, namespace, "Ready")[:2] == ("True", "RelaysAvailable")
    assert _status(env, namespace)["endpoints"]["unsubscribe"] == {"desired": 1, "available": 0}
    wait_for(
        lambda: f"UnsubscribeUnavailable: {message}" in _events(env, namespace, "Warning"),
        STATUS_SECONDS,
        "a Warning Event for the lost endpoint",
        op,
    )

    harness.report_deployment(env, namespace, UNSUBSCRIBE)
    until("EndpointsReady", "True", "EndpointsAvailable")
    back = (
        "EndpointsAvailable: feedback 1/1, unsubscribe 1/1 available (was UnsubscribeUnavailable)"
    )
    wait_for(lambda: back in _events(env, namespace), STATUS_SECONDS, "a Normal Event", op)

    # spec.unsubscribe removed: the endpoint leaves the status with its Deployment
    apply(feedback=ENDPOINTS["feedback"])
    wait_for(
        lambda: set(_status(env, namespace).get("endpoints") or {}) == {"feedback"},
        STATUS_SECONDS,
        "only the feedback endpoint in status.endpoints",
        op,
    )
    assert _said(env, namespace, "EndpointsReady")[:2] == ("True", "EndpointsAvailable")
