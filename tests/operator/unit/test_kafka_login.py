"""A pool's Kafka login as pure decisions (issue 11): the spec fields, the relay
config's paths, the mounted Secret, the Secret checks and the cluster policy.

Before: `spec.kafka` had no login fields (the CRD pruned them, the model
refused them), every relay reached Kafka unauthenticated, and no render put
a credential anywhere near the relays."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mailpipe.contracts.config import parse_config
from mailpipe.operator.cluster_policy import ClusterPolicy, violations
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import PoolRef, build_children
from mailpipe.operator.validation import (
    Problem,
    reference_problems,
    secret_names,
    secret_refs,
)

pytestmark = pytest.mark.security

REF = PoolRef("news", "mail", "uid-1")
SASL = {
    "securityProtocol": "SASL_SSL",
    "saslMechanism": "SCRAM-SHA-256",
    "credentialsSecretRef": {"name": "kafka-news"},
}


def spec(**kafka: Any) -> SendingPoolSpec:
    return SendingPoolSpec.model_validate(
        {
            "kafka": {"bootstrapServers": "kafka:9093", **kafka},
            "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
            "dkim": {"domain": "s.test", "selector": "s1", "secretRef": {"name": "dk"}},
        }
    )


def _rendered(s: SendingPoolSpec, keys: frozenset[str] = frozenset()) -> tuple[str, dict[str, Any]]:
    text, children = build_children(REF, s, "digest", keys)
    deployment = next(c for c in children if c["kind"] == "Deployment")
    return text, deployment["spec"]["template"]["spec"]


def test_the_secret_is_mounted_read_only_and_the_config_names_only_its_files() -> None:
    text, pod = _rendered(spec(**SASL), frozenset({"username", "password", "ca.crt"}))
    assert {"name": "kafka-credentials", "secret": {"secretName": "kafka-news"}} in pod["volumes"]
    assert {
        "name": "kafka-credentials",
        "mountPath": "/etc/mailpipe/kafka",
        "readOnly": True,
    } in pod["containers"][0]["volumeMounts"]
    security = parse_config(text).kafka.security
    assert security.model_dump(mode="json", exclude_none=True) == {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "username_file": "/etc/mailpipe/kafka/username",
        "password_file": "/etc/mailpipe/kafka/password",
        "ca_file": "/etc/mailpipe/kafka/ca.crt",
    }


@pytest.mark.parametrize(
    ("kafka", "keys", "files"),
    [
        (SASL, {"username", "password"}, {"username_file", "password_file"}),  # system CAs
        (
            {"securityProtocol": "SSL", "credentialsSecretRef": {"name": "kafka-news"}},
            {"ca.crt", "tls.crt", "tls.key"},
            {"ca_file", "cert_file", "key_file"},  # mutual TLS: the certificate is the login
        ),
        ({"securityProtocol": "SSL"}, set(), set()),  # TLS only, nothing mounted
        ({}, set(), set()),  # PLAINTEXT: the config as before
    ],
)
def test_only_files_the_secret_has_are_named(
    kafka: dict[str, Any], keys: set[str], files: set[str]
) -> None:
    text, pod = _rendered(spec(**kafka), frozenset(keys))
    assert set(parse_config(text).kafka.security.files()) == files
    mounted = any(v["name"] == "kafka-credentials" for v in pod["volumes"])
    assert mounted == ("credentialsSecretRef" in kafka)
    if not kafka:
        assert "security" not in text  # unchanged ConfigMap, unchanged hash: no roll on upgrade


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        ({"securityProtocol": "SASL_SSL"}, "needs saslMechanism and credentialsSecretRef"),
        (
            {"securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN"},
            "needs saslMechanism and credentialsSecretRef",
        ),
        ({"saslMechanism": "PLAIN"}, "needs securityProtocol SASL_PLAINTEXT or SASL_SSL"),
        ({**SASL, "saslMechanism": "GSSAPI"}, "SCRAM-SHA-512"),
        ({**SASL, "credentialsSecretRef": {"name": "Bad_Name"}}, "pattern"),
        ({"password": "inline"}, "Extra inputs"),  # a secret value never goes in a spec
    ],
)
def test_a_login_that_cannot_work_is_refused(kafka: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**kafka)


def test_the_secret_and_its_keys_are_checked_and_watched() -> None:
    s = spec(**SASL)
    refs = secret_refs(s)
    assert [(r.name, r.key) for r in refs] == [
        ("dk", "private.pem"),
        ("kafka-news", "username"),
        ("kafka-news", "password"),
    ]
    # relays.py re-reads exactly these Secrets to notice a rotation (secretsHash)
    assert secret_names({"dkim": {"secretRef": {"name": "dk"}}, "kafka": SASL}) == [
        "dk",
        "kafka-news",
    ]
    dkim = {"private.pem": "eA=="}
    assert reference_problems(refs, {"dk": dkim, "kafka-news": None}) == [
        Problem("SecretNotFound", "Secret kafka-news not found (spec.kafka.credentialsSecretRef)")
    ]
    assert reference_problems(refs, {"dk": dkim, "kafka-news": {"username": "dQ=="}}) == [
        Problem(
            "SecretKeyNotFound",
            "Secret kafka-news has no key 'password' (spec.kafka.credentialsSecretRef)",
        )
    ]
    tls = spec(securityProtocol="SSL", credentialsSecretRef={"name": "kafka-news"})
    assert reference_problems(secret_refs(tls), {"dk": dkim, "kafka-news": {}}) == []
    assert [p.reason for p in reference_problems(secret_refs(tls), {"dk": dkim})] == [
        "SecretNotFound"
    ]


def test_the_cluster_policy_can_require_a_login() -> None:
    policy = ClusterPolicy.unrestricted().model_copy(update={"kafka_credentials_required": True})
    assert violations(policy, "mail", spec()) == [
        "kafka.credentialsSecretRef is required (the relays must log in to Kafka)"
    ]
    assert violations(policy, "mail", spec(**SASL)) == []
    assert violations(ClusterPolicy.unrestricted(), "mail", spec()) == []
