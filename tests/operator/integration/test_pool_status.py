"""A SendingPool's status comes from the world: its relays, its Secrets, its spec's meaning.

The dev stack runs no kubelet and no Deployment controller, so these tests play
them (`harness.report_deployment`): they write the relay Deployment's status
as a crash, a recovery or a scale would leave it, and check the pool follows.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from mailpipe.devstack import harness

from .conftest import (
    OperatorProcess,
    get,
    kubectl,
    pool_manifest,
    relays_up,
    wait_for,
    wait_pool_ready,
)

pytestmark = pytest.mark.operator

DEPLOYMENT = "mailpipe-relay-news"
STATUS_SECONDS = 30  # a Deployment or Secret event reaches the pool's status well within this
KAFKA_BOOTSTRAP_TIMEOUT_SECONDS = 90  # kafka-python gives up bootstrapping after 30 s


def _condition(env: dict[str, str], namespace: str, type_: str) -> dict[str, Any]:
    obj = get(env, "sp", "news", namespace) or {}
    for c in obj.get("status", {}).get("conditions", []):
        if c.get("type") == type_:
            return dict(c)
    return {}


def _ready(env: dict[str, str], namespace: str) -> tuple[str, str, str]:
    c = _condition(env, namespace, "Ready")
    return c.get("status", ""), c.get("reason", ""), c.get("message", "")


def _wait_ready(
    env: dict[str, str],
    namespace: str,
    op: OperatorProcess,
    status: str,
    reason: str,
    seconds: float = STATUS_SECONDS,
    message: str | None = None,
) -> str:
    """Until Ready has `status` and `reason` (and `message`, when the reason is
    already there and only the message is to change); returns its message."""
    wait_for(
        lambda: (
            _ready(env, namespace)[:2] == (status, reason)
            and message in (None, _ready(env, namespace)[2])
        ),
        seconds,
        f"Ready={status} ({reason}); last seen {_ready(env, namespace)}",
        op,
    )
    return _ready(env, namespace)[2]


def _warnings(env: dict[str, str], namespace: str) -> list[tuple[str, str]]:
    out = kubectl(
        env,
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=news,type=Warning",
        "-o",
        "json",
    )
    return [(e["reason"], e["message"]) for e in json.loads(out.stdout)["items"]]


def _apply_pool(env: dict[str, str], manifest: str) -> None:
    applied = kubectl(env, "apply", "-f", "-", stdin=manifest)
    assert applied.returncode == 0, applied.stderr


def _secret(namespace: str, name: str, key: str, value: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "data": {key: base64.b64encode(value.encode()).decode()},
        }
    )


def _template_annotations(env: dict[str, str], namespace: str) -> dict[str, str]:
    dep = get(env, "deployment", DEPLOYMENT, namespace) or {}
    return dict(dep.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {}))


def test_status_follows_the_relays_scaled_crashed_and_recovered_and_drift_is_reverted(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = operator_factory()
    _apply_pool(
        cli_env, pool_manifest("news", namespace, kafka_bootstrap, topic_prefix, replicas=2)
    )
    relays_up(cli_env, namespace, op, available=0)
    message = _wait_ready(cli_env, namespace, op, "False", "RelaysUnavailable")
    assert message == "0/2 relays available"
    relays_up(cli_env, namespace, op, available=1)
    # Ready was False for the same reason already: wait for the message to follow
    _wait_ready(
        cli_env, namespace, op, "False", "RelaysUnavailable", message="1/2 relays available"
    )
    relays_up(cli_env, namespace, op, available=2)
    _wait_ready(cli_env, namespace, op, "True", "RelaysAvailable")
    assert _condition(cli_env, namespace, "RelaysAvailable")["message"] == "2/2 relays available"
    assert _condition(cli_env, namespace, "Reconciling")["status"] == "False"
    # crash: no relay available any more
    relays_up(cli_env, namespace, op, available=0)
    _wait_ready(cli_env, namespace, op, "False", "RelaysUnavailable")
    assert _condition(cli_env, namespace, "Reconciling")["status"] == "True"  # kstatus: InProgress
    wait_for(
        lambda: ("RelaysUnavailable", "0/2 relays available") in _warnings(cli_env, namespace),
        STATUS_SECONDS,
        "a Warning Event for the lost relays",
        op,
    )
    # recovery
    relays_up(cli_env, namespace, op, available=2)
    _wait_ready(cli_env, namespace, op, "True", "RelaysAvailable")

    # drift: a manual scale and an edited template are applied back
    scaled = kubectl(cli_env, "scale", "deployment", DEPLOYMENT, "-n", namespace, "--replicas=5")
    assert scaled.returncode == 0, scaled.stderr

    def replicas() -> int:
        return int((get(cli_env, "deployment", DEPLOYMENT, namespace) or {})["spec"]["replicas"])

    wait_for(lambda: replicas() == 2, STATUS_SECONDS, "manual scale to 5 reverted to 2", op)
    edited = kubectl(
        cli_env,
        "set",
        "image",
        f"deployment/{DEPLOYMENT}",
        "relay=example.test/other:1",
        "-n",
        namespace,
    )
    assert edited.returncode == 0, edited.stderr

    def image() -> str:
        dep = get(cli_env, "deployment", DEPLOYMENT, namespace) or {}
        return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])

    wait_for(lambda: image() != "example.test/other:1", STATUS_SECONDS, "edited image reverted", op)


def test_a_missing_dkim_secret_stalls_the_pool_until_it_is_created_and_rotating_it_rolls_relays(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = operator_factory()
    dkim = {"domain": "sender.test", "selector": "s1", "secretRef": {"name": "dkim-news"}}
    _apply_pool(cli_env, pool_manifest("news", namespace, kafka_bootstrap, topic_prefix, dkim=dkim))
    message = _wait_ready(cli_env, namespace, op, "False", "SecretNotFound")
    assert message == "Secret dkim-news not found (spec.dkim.secretRef)"
    assert _condition(cli_env, namespace, "Stalled")["status"] == "True"  # kstatus: Failed
    wait_for(
        lambda: ("SecretNotFound", message) in _warnings(cli_env, namespace),
        STATUS_SECONDS,
        "a Warning Event naming the Secret",
        op,
    )
    # nothing was rolled out for a pool that cannot run
    assert get(cli_env, "deployment", DEPLOYMENT, namespace) is None
    assert get(cli_env, "configmap", DEPLOYMENT, namespace) is None

    created = kubectl(
        cli_env, "apply", "-f", "-", stdin=_secret(namespace, "dkim-news", "private.pem", "key-1")
    )
    assert created.returncode == 0, created.stderr
    wait_pool_ready(cli_env, namespace, op)  # the relays roll out, and are then available
    assert _condition(cli_env, namespace, "Stalled")["status"] == "False"
    first = _template_annotations(cli_env, namespace)["mailpipe.io/secrets-hash"]

    # rotation: a new key in the same Secret rolls the relays (new pod template)
    rotated = kubectl(
        cli_env, "apply", "-f", "-", stdin=_secret(namespace, "dkim-news", "private.pem", "key-2")
    )
    assert rotated.returncode == 0, rotated.stderr
    wait_for(
        lambda: (
            _template_annotations(cli_env, namespace).get("mailpipe.io/secrets-hash")
            not in (None, first)
        ),
        STATUS_SECONDS,
        "the relays' pod template to change with the rotated key",
        op,
    )
    # the rollout shows as Reconciling until the new relays are up; Ready holds
    wait_for(
        lambda: _condition(cli_env, namespace, "Reconciling").get("reason") == "RollingOut",
        STATUS_SECONDS,
        "Reconciling=RollingOut",
        op,
    )
    assert _ready(cli_env, namespace)[0] == "True"
    harness.report_deployment(cli_env, namespace, DEPLOYMENT)
    wait_for(
        lambda: _condition(cli_env, namespace, "Reconciling").get("status") == "False",
        STATUS_SECONDS,
        "rollout done",
        op,
    )


SEMANTIC_ERRORS = [
    # (spec fields, Ready reason, text in its one-line message)
    ({"warmup": {"timeZone": "Europe/Berln"}}, "UnknownTimeZone", "Europe/Berln"),
    # the written schedule fits, but not the default one (25,860 s) in one hour
    ({"retry": {"maxAgeSeconds": 3600}}, "RetryLongerThanMaxAge", "maxAgeSeconds 3600s"),
]


@pytest.mark.parametrize(
    ("fields", "reason", "text"), SEMANTIC_ERRORS, ids=["time-zone", "retry-vs-max-age"]
)
def test_a_semantic_error_is_ready_false_with_a_reason_and_nothing_is_rolled_out(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    fields: dict[str, Any],
    reason: str,
    text: str,
) -> None:
    op = operator_factory()
    _apply_pool(cli_env, pool_manifest("news", namespace, kafka_bootstrap, topic_prefix, **fields))
    message = _wait_ready(cli_env, namespace, op, "False", reason)
    assert text in message and "\n" not in message, message
    wait_for(
        lambda: (reason, message) in _warnings(cli_env, namespace),
        STATUS_SECONDS,
        "a Warning Event",
        op,
    )
    assert get(cli_env, "deployment", DEPLOYMENT, namespace) is None
    assert get(cli_env, "configmap", DEPLOYMENT, namespace) is None


SCHEMA_ERRORS = [
    (
        {"warmup": {"schedule": [{"day": 1, "dailyLimit": 50, "groupLimits": {"gmail": 10}}]}},
        "groupLimits name a domain group that is not defined",
    ),
    (
        {"retry": {"scheduleSeconds": [3600, 7200], "maxAgeSeconds": 3600}},
        "retry schedule is longer than maxAgeSeconds",
    ),
]


@pytest.mark.parametrize(
    ("fields", "text"), SCHEMA_ERRORS, ids=["undefined-group", "retry-longer-than-max-age"]
)
def test_cross_field_errors_are_refused_by_the_schema(
    crds: None,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    fields: dict[str, Any],
    text: str,
) -> None:
    refused = kubectl(
        cli_env,
        "apply",
        "-f",
        "-",
        stdin=pool_manifest("news", namespace, kafka_bootstrap, topic_prefix, **fields),
    )
    assert refused.returncode != 0 and text in refused.stderr, refused.stderr


def test_an_unreachable_kafka_is_one_line(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    topic_prefix: str,
) -> None:
    op = operator_factory()
    bootstrap = "127.0.0.1:9"  # discard port: nothing listens
    _apply_pool(cli_env, pool_manifest("news", namespace, bootstrap, topic_prefix))
    message = _wait_ready(
        cli_env, namespace, op, "False", "KafkaUnavailable", KAFKA_BOOTSTRAP_TIMEOUT_SECONDS
    )
    assert message == f"KafkaUnavailable: cannot reach bootstrap {bootstrap} (KafkaTimeoutError)"
    wait_for(
        lambda: ("KafkaUnavailable", message) in _warnings(cli_env, namespace),
        STATUS_SECONDS,
        "a Warning Event",
        op,
    )


def _events_of_pool(env: dict[str, str], namespace: str, reason: str) -> list[str]:
    out = kubectl(
        env,
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name=news,reason={reason}",
        "-o",
        "json",
    )
    return [e["message"] for e in json.loads(out.stdout)["items"]]


def test_deployment_events_that_change_nothing_apply_nothing(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    """Applies are idempotent: the relay Deployment's status and metadata change
    (as its controller and kubectl would), the operator reconciles each time,
    and sends no apply and writes no `Applied` Event, since nothing it renders
    differs. The API server returns the Deployment defaulted and re-encoded
    (`hostNetwork: false` omitted, `0.5` CPU as `500m`), which once looked like
    drift on every event. The same after an operator restart."""
    resources = {"requests": {"cpu": "0.5", "memory": "0.25Gi"}}  # stored as 500m, 256Mi
    manifest = pool_manifest(
        "news", namespace, kafka_bootstrap, topic_prefix, replicas=2, resources=resources
    )
    op = operator_factory()
    _apply_pool(cli_env, manifest)
    relays_up(cli_env, namespace, op)
    _wait_ready(cli_env, namespace, op, "True", "RelaysAvailable")

    def deployment_applies() -> list[str]:
        return [m for m in _events_of_pool(cli_env, namespace, "Applied") if "Deployment/" in m]

    def relays_lost(available: int) -> None:
        """Ready pool -> `available` relays; waits for the Warning the same reconcile
        posts: Events are posted in order, so any Applied before it is visible."""
        relays_up(cli_env, namespace, op, available=available)
        wanted = ("RelaysUnavailable", f"{available}/2 relays available")
        wait_for(
            lambda: wanted in _warnings(cli_env, namespace),
            STATUS_SECONDS,
            f"a Warning Event for {wanted}",
            op,
        )
        relays_up(cli_env, namespace, op)
        _wait_ready(cli_env, namespace, op, "True", "RelaysAvailable")

    # metadata changes, as `kubectl annotate` and `kubectl label` make them
    for verb, change in (("annotate", "note=checked"), ("label", "team=mail")):
        done = kubectl(cli_env, verb, "deployment", DEPLOYMENT, "-n", namespace, change)
        assert done.returncode == 0, done.stderr
    relays_lost(1)  # status changes, as the Deployment controller makes them
    assert len(deployment_applies()) == 1, deployment_applies()  # the first rollout only
    op.stop()
    op = operator_factory()  # resumes the pool: compares with what the API server holds
    relays_lost(0)
    assert len(deployment_applies()) == 1, deployment_applies()
    assert "drifted" not in op.log_tail()
