"""The submission endpoint's ConfigMap, Deployment and Service follow `spec.submission`
against the real API server and Kafka: held with a specific reason on the pool
while its TLS or users Secret is missing or unusable, there once both are good
(with its ledger topic), gone when the field is removed or the pool deleted (the
dev stack runs no garbage collector: the operator deletes them itself)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailpipe.devstack.harness import Child
from mailpipe.inbound.submission_policy import hash_password
from mailpipe.kafkakit import list_topics
from mailpipe.operator.pool import SECRETS_HASH_ANNOTATION
from tests.relay.mx_certs import make_certs

from .conftest import get, kubectl, pool_manifest, wait_for

pytestmark = pytest.mark.operator

SECONDS = 60  # a reconcile, or the Secrets timer's next look, on a loaded machine
NAME = "mailpipe-submission-news"
KINDS = [("configmap", NAME), ("deployment", NAME), ("service", NAME)]
SUBMISSION = {"hostname": "submit.sender.test", "tlsSecret": "sub-tls", "usersSecret": "sub-users"}


def _children(env: dict[str, str], namespace: str) -> list[bool]:
    return [get(env, kind, name, namespace) is not None for kind, name in KINDS]


def _ready(env: dict[str, str], namespace: str) -> dict[str, Any]:
    pool = get(env, "sp", "news", namespace) or {}
    conditions = (pool.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def _warnings(env: dict[str, str], namespace: str) -> set[str]:
    out = kubectl(env, "get", "events", "-n", namespace, "-o", "json")
    return {e.get("reason") for e in json.loads(out.stdout)["items"] if e.get("type") == "Warning"}


def _users_secret(env: dict[str, str], namespace: str, users: dict[str, Any], tmp: Path) -> None:
    """Create or replace the users Secret (key users.yaml)."""
    path = tmp / "users.yaml"
    path.write_text(yaml.safe_dump(users))
    manifest = kubectl(
        env,
        "create",
        "secret",
        "generic",
        "sub-users",
        "-n",
        namespace,
        f"--from-file=users.yaml={path}",
        "--dry-run=client",
        "-o",
        "yaml",
    )
    assert manifest.returncode == 0, manifest.stderr
    done = kubectl(env, "apply", "-f", "-", stdin=manifest.stdout)
    assert done.returncode == 0, done.stderr


def _secrets_hash(env: dict[str, str], namespace: str, name: str) -> str | None:
    deployment = get(env, "deployment", name, namespace) or {}
    template = (deployment.get("spec") or {}).get("template") or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(SECRETS_HASH_ANNOTATION)
    return value if isinstance(value, str) else None


def _reverted(env: dict[str, str], namespace: str) -> list[str]:
    """The messages of the pool's ChildReverted Events (the children timer's)."""
    out = kubectl(env, "get", "events", "-n", namespace, "-o", "json")
    events = json.loads(out.stdout)["items"]
    return [e["message"] for e in events if e.get("reason") == "ChildReverted"]


def _wait_reason(env: dict[str, str], namespace: str, reason: str, op: Child) -> dict[str, Any]:
    wait_for(lambda: _ready(env, namespace).get("reason") == reason, SECONDS, reason, op)
    return _ready(env, namespace)


def test_the_endpoint_waits_for_good_secrets_comes_with_its_field_and_goes_without_it(
    operator_factory: Callable[..., Child],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    env = cli_env
    op = operator_factory()

    def apply(**spec: object) -> None:
        manifest = pool_manifest("news", namespace, kafka_bootstrap, topic_prefix, **spec)
        done = kubectl(env, "apply", "-f", "-", stdin=manifest)
        assert done.returncode == 0, done.stderr

    apply(submission=SUBMISSION)
    # No Secret yet: a condition naming the field and the command, a Warning Event,
    # nothing rendered (no endpoint pod to crash-loop on a missing mount).
    ready = _wait_reason(env, namespace, "SubmissionTLSSecretNotFound", op)
    assert ready["status"] == "False"
    assert "spec.submission.tlsSecret" in ready["message"]
    assert "kubectl create secret tls sub-tls" in ready["message"]
    assert "spec.submission.usersSecret" in ready["message"]  # both said at once
    wait_for(
        lambda: "SubmissionTLSSecretNotFound" in _warnings(env, namespace), SECONDS, "event", op
    )
    assert _children(env, namespace) == [False] * len(KINDS)

    certs = make_certs(tmp_path, "submit.sender.test")
    tls = kubectl(
        env,
        *("create", "secret", "tls", "sub-tls", "-n", namespace),
        f"--cert={certs.chain}",
        f"--key={certs.key}",
    )
    assert tls.returncode == 0, tls.stderr
    _wait_reason(env, namespace, "SubmissionUsersSecretNotFound", op)

    # A plain-text password instead of a hash: refused naming the user, not started
    _users_secret(
        env,
        namespace,
        {"app": {"password_hash": "hunter2", "sender_domains": ["sender.test"]}},
        tmp_path,
    )
    ready = _wait_reason(env, namespace, "SubmissionUsersInvalid", op)
    assert "user 'app': password_hash is not a scrypt hash" in ready["message"]
    assert _children(env, namespace) == [False] * len(KINDS)

    good = {"app": {"password_hash": hash_password("pw"), "sender_domains": ["sender.test"]}}
    _users_secret(env, namespace, good, tmp_path)
    wait_for(lambda: _children(env, namespace) == [True] * len(KINDS), SECONDS, "endpoint", op)
    wait_for(
        lambda: not _ready(env, namespace).get("reason", "Submission").startswith("Submission"),
        SECONDS,
        "the Secrets' condition lifted",
        op,
    )
    pool = get(env, "sp", "news", namespace) or {}
    deployment = get(env, "deployment", NAME, namespace) or {}
    service = get(env, "service", NAME, namespace) or {}
    for obj in (deployment, service):
        [owner] = obj["metadata"]["ownerReferences"]
        assert owner["kind"] == "SendingPool" and owner["uid"] == pool["metadata"]["uid"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["submission", "serve"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports["submission"] == 587 and ports["submissions"] == 465 and "metrics" in ports
    ledger = f"{topic_prefix}.submitted"
    wait_for(lambda: ledger in list_topics(kafka_bootstrap), SECONDS, "the ledger topic", op)

    # A new user rolls the endpoint (its pod template's Secrets hash), by the
    # reconcile that saw the Secret change, not by the children timer putting
    # back a "drifted" child; the relays keep their pods.
    relay_before = _secrets_hash(env, namespace, "mailpipe-relay-news")
    endpoint_before = _secrets_hash(env, namespace, NAME)
    _users_secret(env, namespace, {**good, "other": good["app"]}, tmp_path)
    wait_for(
        lambda: _secrets_hash(env, namespace, NAME) not in (endpoint_before, None),
        SECONDS,
        "the endpoint rolled for the new user",
        op,
    )
    assert _secrets_hash(env, namespace, "mailpipe-relay-news") == relay_before
    assert not [m for m in _reverted(env, namespace) if NAME in m], _reverted(env, namespace)

    apply()  # the field removed
    wait_for(lambda: _children(env, namespace) == [False] * len(KINDS), SECONDS, "removed", op)
    assert get(env, "deployment", "mailpipe-relay-news", namespace) is not None  # relays stay

    apply(submission=SUBMISSION)
    wait_for(lambda: _children(env, namespace) == [True] * len(KINDS), SECONDS, "back", op)
    deleted = kubectl(env, "delete", "sp", "news", "-n", namespace, "--wait=false")
    assert deleted.returncode == 0, deleted.stderr
    wait_for(lambda: _children(env, namespace) == [False] * len(KINDS), SECONDS, "deleted", op)
    # the pool's topics went with it (deletionPolicy Delete), its ledger too
    wait_for(lambda: ledger not in list_topics(kafka_bootstrap), SECONDS, "ledger deleted", op)
