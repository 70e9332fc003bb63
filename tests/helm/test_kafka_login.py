"""The chart gives the operator its own Kafka login: a mounted Secret and paths (issue 11).

Before: the chart had no Kafka credential values, so an operator installed
against a broker with ACLs could not log in (and had to be a super user of
an unauthenticated listener).
"""

from __future__ import annotations

import pytest

from mailpipe.contracts.kafka_security import KafkaSecurity, security_from_env

from .test_chart import CHART, helm, operator_container, render

pytestmark = pytest.mark.security

SASL = (
    "kafka.securityProtocol=SASL_SSL",
    "kafka.saslMechanism=SCRAM-SHA-512",
    "kafka.credentialsSecret=mailpipe-operator-kafka",
    "kafka.caFromSecret=true",
)


def test_the_operators_login_is_a_mounted_secret_and_file_paths() -> None:
    docs = render(*SASL)
    container = operator_container(docs)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert security_from_env(env) == KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        username_file="/etc/mailpipe/kafka/username",
        password_file="/etc/mailpipe/kafka/password",
        ca_file="/etc/mailpipe/kafka/ca.crt",
    )
    mount = next(m for m in container["volumeMounts"] if m["name"] == "kafka-credentials")
    assert mount == {
        "name": "kafka-credentials",
        "mountPath": "/etc/mailpipe/kafka",
        "readOnly": True,
    }
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "kafka-credentials",
        "secret": {"secretName": "mailpipe-operator-kafka"},
    } in volumes


def test_by_default_the_operator_logs_in_as_before() -> None:
    container = operator_container(render())
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert security_from_env(env) == KafkaSecurity()
    assert all(m["name"] != "kafka-credentials" for m in container["volumeMounts"])


@pytest.mark.parametrize(
    "values",
    [
        ("kafka.securityProtocol=SASL_SSL",),  # no mechanism, no Secret
        ("kafka.securityProtocol=SASL_SSL", "kafka.saslMechanism=SCRAM-SHA-512"),  # no Secret
        ("kafka.securityProtocol=SASL_SSL", "kafka.saslMechanism=GSSAPI"),
        ("kafka.securityProtocol=TLS",),
        ("kafka.caFromSecret=true",),  # a CA from no Secret
    ],
)
def test_the_schema_refuses_a_login_that_cannot_work(values: tuple[str, ...]) -> None:
    args = ["template", "rel", str(CHART)]
    for v in values:
        args += ["--set", v]
    out = helm(*args)
    assert out.returncode != 0, out.stdout[:200]
    assert "kafka" in out.stderr
