"""A pool's Kafka credentials reach its relays as a mounted Secret and file paths (issue 11).

Before: a SendingPool had no way to give its relays a Kafka login (the spec
refused `credentialsSecretRef`), so a broker with ACLs could not tell one
tenant's relays from another's. Now the operator mounts the Secret read-only,
writes only paths into the relay ConfigMap, and a missing Secret or key
stalls the pool with a reason and a Warning, leaving running relays alone.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from mailpipe.contracts.config import parse_config
from mailpipe.contracts.kafka_security import (
    ENV_PASSWORD_FILE,
    ENV_SASL_MECHANISM,
    ENV_SECURITY_PROTOCOL,
    ENV_USERNAME,
)
from mailpipe.contracts.topics import Topics
from mailpipe.kafkakit import list_topics
from tests.scram_broker import MECHANISM, OPERATOR, PASSWORDS, Broker, password_file, scram_broker

from .conftest import (
    DELAY_STEPS,
    OperatorProcess,
    get,
    kubectl,
    pool_manifest,
    wait_for,
    wait_pool_ready,
)
from .test_pool_status import (
    DEPLOYMENT,
    KAFKA_BOOTSTRAP_TIMEOUT_SECONDS,
    STATUS_SECONDS,
    _apply_pool,
    _condition,
    _wait_ready,
    _warnings,
)

pytestmark = [pytest.mark.operator, pytest.mark.security]
__all__ = ["scram_broker"]  # the module's SCRAM broker fixture, imported for pytest

SECRET = "kafka-news"
PASSWORD = "tenant-a-Secret-pw-0815"  # must appear in no ConfigMap, Deployment or status


def _secret(namespace: str, **data: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
    )


def _apply(env: dict[str, str], manifest: str) -> None:
    done = kubectl(env, "apply", "-f", "-", stdin=manifest)
    assert done.returncode == 0, done.stderr


def test_the_credentials_secret_is_mounted_and_the_configmap_holds_paths_only(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = operator_factory()
    kafka = {
        "bootstrapServers": kafka_bootstrap,
        "topicPrefix": topic_prefix,
        "partitions": 2,
        "delaySteps": ["1m"],
        "securityProtocol": "SASL_SSL",
        "saslMechanism": "SCRAM-SHA-512",
        "credentialsSecretRef": {"name": SECRET},
    }
    _apply_pool(
        cli_env, pool_manifest("news", namespace, kafka_bootstrap, topic_prefix, kafka=kafka)
    )

    # no Secret: stalled, named, a Warning, nothing rolled out
    message = _wait_ready(cli_env, namespace, op, "False", "SecretNotFound")
    assert message == f"Secret {SECRET} not found (spec.kafka.credentialsSecretRef)"
    assert _condition(cli_env, namespace, "Stalled")["status"] == "True"
    wait_for(
        lambda: ("SecretNotFound", message) in _warnings(cli_env, namespace),
        STATUS_SECONDS,
        "a Warning Event naming the Secret",
        op,
    )
    assert get(cli_env, "deployment", DEPLOYMENT, namespace) is None

    # a Secret without the password: the key is named
    _apply(cli_env, _secret(namespace, username="mailpipe-a"))
    message = _wait_ready(cli_env, namespace, op, "False", "SecretKeyNotFound")
    assert message == f"Secret {SECRET} has no key 'password' (spec.kafka.credentialsSecretRef)"

    # complete: mounted read-only, paths in the config, the CA found by its key
    _apply(
        cli_env, _secret(namespace, username="mailpipe-a", password=PASSWORD, **{"ca.crt": "CA"})
    )
    wait_pool_ready(cli_env, namespace, op)
    dep = get(cli_env, "deployment", DEPLOYMENT, namespace) or {}
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "kafka-credentials", "secret": {"secretName": SECRET}} in [
        {k: v for k, v in vol.items() if k in ("name", "secret")}
        | {"secret": {"secretName": vol.get("secret", {}).get("secretName")}}
        for vol in pod["volumes"]
    ]
    mount = next(
        m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "kafka-credentials"
    )
    assert mount == {
        "name": "kafka-credentials",
        "mountPath": "/etc/mailpipe/kafka",
        "readOnly": True,
    }
    configmap = get(cli_env, "configmap", DEPLOYMENT, namespace) or {}
    text = configmap["data"]["relay.yaml"]
    security = parse_config(text).kafka.security
    assert security.model_dump(exclude_none=True) == {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "username_file": "/etc/mailpipe/kafka/username",
        "password_file": "/etc/mailpipe/kafka/password",
        "ca_file": "/etc/mailpipe/kafka/ca.crt",
    }
    rendered = yaml.safe_dump([configmap, dep, get(cli_env, "sp", "news", namespace)])
    assert PASSWORD not in rendered and "mailpipe-a" not in rendered
    template = dict(dep["spec"]["template"]["metadata"]["annotations"])

    # the Secret goes away under running relays: the pool says so, the relays stay as they are
    gone = kubectl(cli_env, "delete", "secret", SECRET, "-n", namespace)
    assert gone.returncode == 0, gone.stderr
    _wait_ready(cli_env, namespace, op, "False", "SecretNotFound")
    after = get(cli_env, "deployment", DEPLOYMENT, namespace) or {}
    assert after["spec"]["template"]["metadata"]["annotations"] == template
    assert after["spec"]["template"]["spec"]["volumes"] == pod["volumes"]


def test_the_operator_logs_in_with_its_own_credentials_and_creates_the_pools_topics(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    topic_prefix: str,
    scram_broker: Broker,
    tmp_path: Path,
) -> None:
    """Against a broker that lets nobody in without a login, and the operator's
    principal only what README's ACLs give it: its topics are created, its
    events followed, and its password is in no log."""
    secret = password_file(tmp_path, "operator-password", PASSWORDS[OPERATOR])
    op = operator_factory(
        **{
            ENV_SECURITY_PROTOCOL: "SASL_PLAINTEXT",
            ENV_SASL_MECHANISM: MECHANISM,
            ENV_USERNAME: OPERATOR,
            ENV_PASSWORD_FILE: str(secret),
        }
    )
    _apply_pool(cli_env, pool_manifest("news", namespace, scram_broker.bootstrap, topic_prefix))
    wait_pool_ready(cli_env, namespace, op)
    assert _condition(cli_env, namespace, "TopicsReady")["status"] == "True"
    expected = Topics.for_pool(namespace, "news", DELAY_STEPS, prefix=topic_prefix)
    assert expected.outbound in list_topics(scram_broker.admin)
    logs = "".join(f.read_text(errors="replace") for f in tmp_path.rglob("*.log"))
    assert "Kafka login: SASL_PLAINTEXT SCRAM-SHA-512 as mailpipe-operator" in logs
    assert PASSWORDS[OPERATOR] not in logs


def test_a_refused_operator_login_is_named_on_the_pool_not_a_crash(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    topic_prefix: str,
    scram_broker: Broker,
    tmp_path: Path,
) -> None:
    """Before: kafka-python's "Unable to bootstrap", as if the broker were away."""
    wrong = password_file(tmp_path, "operator-password", "not-the-operators-password")
    op = operator_factory(
        **{
            ENV_SECURITY_PROTOCOL: "SASL_PLAINTEXT",
            ENV_SASL_MECHANISM: MECHANISM,
            ENV_USERNAME: OPERATOR,
            ENV_PASSWORD_FILE: str(wrong),
        }
    )
    _apply_pool(cli_env, pool_manifest("news", namespace, scram_broker.bootstrap, topic_prefix))
    message = _wait_ready(
        cli_env, namespace, op, "False", "KafkaUnavailable", KAFKA_BOOTSTRAP_TIMEOUT_SECONDS
    )
    assert "SaslAuthenticationFailedError" in message, message
    assert f"the operator's login to {scram_broker.bootstrap} refused" in message, message
    assert op.alive()
    logs = "".join(f.read_text(errors="replace") for f in tmp_path.rglob("*.log"))
    assert "not-the-operators-password" not in logs
