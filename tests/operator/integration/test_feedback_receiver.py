"""The feedback receiver's Deployment and Service follow `spec.feedback`, and the
one-click endpoint's ConfigMap, Deployment and Service `spec.unsubscribe`, against
the real API server: there with the field, gone when it is removed or the pool is
deleted (the dev stack runs no garbage collector: the operator deletes them itself)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from .conftest import OperatorProcess, get, kubectl, pool_manifest, wait_for

pytestmark = pytest.mark.operator

CHILDREN_SECONDS = 60  # a reconcile, on a loaded machine
NAME = "mailpipe-feedback-news"
UNSUBSCRIBE = "mailpipe-unsubscribe-news"
ENDPOINTS = {
    "feedback": {"bounceDomain": "bounces.sender.test", "keySecretRef": {"name": "fb-keys"}},
    "unsubscribe": {"baseUrl": "https://unsub.sender.test/u/", "keySecret": "fb-keys"},
}
KINDS = [
    ("deployment", NAME),
    ("service", NAME),
    ("configmap", UNSUBSCRIBE),
    ("deployment", UNSUBSCRIBE),
    ("service", UNSUBSCRIBE),
]


def _children(env: dict[str, str], namespace: str) -> list[bool]:
    return [get(env, kind, name, namespace) is not None for kind, name in KINDS]


def _reverted(env: dict[str, str], namespace: str) -> list[str]:
    """The parts of the pool's ChildReverted Events' messages, one per child."""
    out = kubectl(env, "get", "events", "-n", namespace, "-o", "json")
    events = json.loads(out.stdout)["items"]
    messages = [e["message"] for e in events if e.get("reason") == "ChildReverted"]
    return [part.strip() for m in messages for part in m.split(":", 1)[1].split(";")]


def test_the_endpoints_come_with_their_fields_and_go_without_them(
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

    apply(**ENDPOINTS)
    wait_for(
        lambda: _children(env, namespace) == [True] * len(KINDS), CHILDREN_SECONDS, "receiver", op
    )
    pool = get(env, "sp", "news", namespace) or {}
    deployment = get(env, "deployment", NAME, namespace) or {}
    service = get(env, "service", NAME, namespace) or {}
    for obj in (deployment, service):
        [owner] = obj["metadata"]["ownerReferences"]
        assert owner["kind"] == "SendingPool" and owner["uid"] == pool["metadata"]["uid"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "feedback"
    ports = [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]]
    assert ports[0] == (25, "smtp") and ports[1][1] == "metrics"  # and the ServiceMonitor's
    endpoint = get(env, "deployment", UNSUBSCRIBE, namespace) or {}
    [container] = endpoint["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "unsubscribe"

    # a receiver deleted by hand is put back (the children timer), and an
    # untouched one is never "put back" (no drift seen where there is none)
    gone = kubectl(env, "delete", "deployment", NAME, "-n", namespace, "--wait=false")
    assert gone.returncode == 0, gone.stderr
    wait_for(
        lambda: any(NAME in m for m in _reverted(env, namespace)), CHILDREN_SECONDS, "put back", op
    )
    wait_for(lambda: _children(env, namespace) == [True] * len(KINDS), CHILDREN_SECONDS, "up", op)
    assert all(m.endswith("(deleted)") for m in _reverted(env, namespace)), _reverted(
        env, namespace
    )

    apply()  # the fields removed
    wait_for(
        lambda: _children(env, namespace) == [False] * len(KINDS), CHILDREN_SECONDS, "removed", op
    )
    assert get(env, "deployment", "mailpipe-relay-news", namespace) is not None  # relays stay

    apply(**ENDPOINTS)
    wait_for(lambda: _children(env, namespace) == [True] * len(KINDS), CHILDREN_SECONDS, "back", op)
    deleted = kubectl(env, "delete", "sp", "news", "-n", namespace, "--wait=false")
    assert deleted.returncode == 0, deleted.stderr
    wait_for(
        lambda: _children(env, namespace) == [False] * len(KINDS), CHILDREN_SECONDS, "deleted", op
    )
