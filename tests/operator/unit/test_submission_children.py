"""The submission endpoint's ConfigMap, Deployment and Service, rendered for a pool
with spec.submission, and the checks of the Secrets it mounts (a missing or
unusable one is a condition on the pool, never an endpoint in a crash loop)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from mailpipe.contracts.signing import ConfigSigner
from mailpipe.inbound.submission_policy import (
    SuppressedRecipients,
    hash_password,
    parse_submission_config,
)
from mailpipe.operator.child_drift import guarded
from mailpipe.operator.config_signing import PUBLIC_KEY_ENV, SIGNATURE_KEY, signed
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import (
    HASH_ANNOTATION,
    SECRETS_HASH_ANNOTATION,
    PoolRef,
    build_children,
    secrets_digests,
    stale_children,
)
from mailpipe.operator.validation import (
    Reason,
    reference_problems,
    secret_names,
    secret_refs,
)
from tests.relay.mx_certs import make_certs

REF = PoolRef("news", "mail", "uid-1")
NAME = "mailpipe-submission-news"
SUBMISSION = {"hostname": "submit.example.com", "tlsSecret": "sub-tls", "usersSecret": "sub-users"}


def spec(**extra: Any) -> SendingPoolSpec:
    base: dict[str, Any] = {
        "kafka": {"bootstrapServers": "kafka:9092"},
        "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
    }
    base.update(extra)
    return SendingPoolSpec.model_validate(base)


def named(children: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [obj] = [c for c in children if c["kind"] == kind and c["metadata"]["name"] == name]
    return obj


def test_submission_renders_a_restricted_endpoint_whose_config_the_endpoint_accepts() -> None:
    s = spec(
        submission={**SUBMISSION, "replicas": 2, "suppressedRecipients": "Drop"},
        kafka={
            "bootstrapServers": "kafka:9093",
            "securityProtocol": "SASL_PLAINTEXT",
            "saslMechanism": "PLAIN",
            "credentialsSecretRef": {"name": "kafka-login"},
        },
    )
    text, children = build_children(REF, s, "relay-digest", submission_digest="sub-digest")
    assert [n for _, n in stale_children(REF, children) if "submission" in n] == []
    cm = named(children, "ConfigMap", NAME)
    # the endpoint's own parser takes what the operator renders
    config = parse_submission_config(cm["data"]["submission.yaml"])
    relay = yaml.safe_load(text)
    assert config.pool == "mail/news" and config.hostname == "submit.example.com"
    assert config.kafka.outbound_topic == relay["kafka"]["outbound_topic"]
    assert config.kafka.security.password_file == relay["kafka"]["security"]["password_file"]
    assert config.ledger == "mailpipe.mail.news.submitted"
    assert config.suppressed_recipients is SuppressedRecipients.DROP
    assert config.starttls is not None and config.implicit_tls is not None

    dep = named(children, "Deployment", NAME)
    [owner] = dep["metadata"]["ownerReferences"]
    assert owner["kind"] == "SendingPool" and owner["uid"] == "uid-1" and owner["controller"]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"]["matchLabels"] == {
        "mailpipe.io/pool": "news",
        "app.kubernetes.io/component": "submission",
    }
    template = dep["spec"]["template"]
    # its own Secrets' digest: a new user or certificate rolls it, not the relays
    assert template["metadata"]["annotations"][SECRETS_HASH_ANNOTATION] == "sub-digest"
    assert (
        template["metadata"]["annotations"][HASH_ANNOTATION]
        == cm["metadata"]["annotations"][HASH_ANNOTATION]
    )
    pod = template["spec"]
    assert "hostNetwork" not in pod and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["args"][:4] == [
        "submission",
        "serve",
        "--config",
        "/etc/mailpipe/submission.yaml",
    ]
    # one transactional id per pod (the kubelet expands $(POD_NAME) from the env)
    assert container["args"][4:] == [
        "--transactional-id",
        "mailpipe.mail.news.submitted.$(POD_NAME)",
    ]
    assert "POD_NAME" in {e["name"] for e in container["env"]}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.starttls is not None and config.implicit_tls is not None
    assert ports == {
        "submission": config.starttls.port,
        "submissions": config.implicit_tls.port,
        "metrics": config.metrics_port,
    }
    assert all(p >= 1024 for p in ports.values())  # bound as non-root
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # only what it reads: its config, certificate, users and the Kafka login
    assert {v["name"]: v.get("secret") or v.get("configMap") for v in pod["volumes"]} == {
        "config": {"name": NAME},
        "submission-tls": {"secretName": "sub-tls"},
        "submission-users": {"secretName": "sub-users"},
        "kafka-credentials": {"secretName": "kafka-login"},
    }
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert all(m["readOnly"] for m in mounts.values())
    for path in (config.tls_cert_file, config.tls_key_file, config.users_file):
        assert str(Path(path).parent) in mounts, path

    svc = named(children, "Service", NAME)
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [
        {"name": "submission", "port": 587, "targetPort": "submission"},
        {"name": "submissions", "port": 465, "targetPort": "submissions"},
        {"name": "metrics", "port": config.metrics_port, "targetPort": "metrics"},
    ]
    for obj in (cm, dep, svc):
        assert obj["metadata"]["ownerReferences"] == dep["metadata"]["ownerReferences"]
        assert guarded(obj)  # the children timer puts them back


def test_a_port_of_0_has_no_listener_and_other_ports_are_the_services() -> None:
    s = spec(submission={**SUBMISSION, "starttlsPort": 0, "implicitTlsPort": 10465})
    _, children = build_children(REF, s)
    config = parse_submission_config(named(children, "ConfigMap", NAME)["data"]["submission.yaml"])
    assert config.starttls is None and config.implicit_tls is not None
    svc = named(children, "Service", NAME)
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]][:-1] == [("submissions", 10465)]


def test_the_relays_config_and_signature_are_as_without_the_endpoint() -> None:
    signer = ConfigSigner.generate()
    without, _ = build_children(REF, spec())
    text, children = build_children(REF, spec(submission=SUBMISSION))
    assert text == without
    for child in signed(children, text, signer):
        if child["metadata"]["name"] != NAME:
            continue
        if child["kind"] == "ConfigMap":
            assert SIGNATURE_KEY not in child["data"]
        if child["kind"] == "Deployment":
            [container] = child["spec"]["template"]["spec"]["containers"]
            assert PUBLIC_KEY_ENV not in {e["name"] for e in container["env"]}


@pytest.mark.parametrize(
    ("submission", "message"),
    [
        ({"starttlsPort": 0, "implicitTlsPort": 0}, "cannot both be 0"),
        ({"starttlsPort": 465, "implicitTlsPort": 465}, "must differ"),
        ({"maxMessageBytes": 2 * 1024 * 1024}, "less than or equal to 1048576"),
        ({"suppressedRecipients": "Bounce"}, "'Refuse' or 'Drop'"),
        ({"hostname": "Submit_Host"}, "should match pattern"),
    ],
    ids=["no-listener", "same-port", "too-big", "unknown-mode", "bad-hostname"],
)
def test_a_bad_submission_spec_is_refused_naming_the_rule(
    submission: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(submission={**SUBMISSION, **submission})


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def tls_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    certs = make_certs(tmp_path_factory.mktemp("certs"), "submit.example.com")
    return {"tls.crt": b64(certs.chain.read_bytes()), "tls.key": b64(certs.key.read_bytes())}


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    certs = make_certs(tmp_path_factory.mktemp("other"), "other.example.com")
    return b64(certs.key.read_bytes())


GOOD_USERS = yaml.safe_dump(
    {"app": {"password_hash": hash_password("pw"), "sender_domains": ["shop.example"]}}
)


def problems(found: dict[str, dict[str, str] | None]) -> list[tuple[str, str]]:
    return [
        (p.reason, p.message)
        for p in reference_problems(secret_refs(spec(submission=SUBMISSION)), found)
    ]


def test_good_secrets_raise_no_problem(tls_data: dict[str, str]) -> None:
    assert problems({"sub-tls": tls_data, "sub-users": {"users.yaml": b64(GOOD_USERS)}}) == []


@pytest.mark.parametrize(
    ("tls", "users", "reason", "words"),
    [
        (None, "good", Reason.SUBMISSION_TLS_SECRET_NOT_FOUND, "kubectl create secret tls sub-tls"),
        ("good", None, Reason.SUBMISSION_USERS_SECRET_NOT_FOUND, "--from-file=users.yaml"),
        ({}, "good", Reason.SUBMISSION_TLS_SECRET_INVALID, "needs keys tls.crt and tls.key"),
        (
            "other-key",
            "good",
            Reason.SUBMISSION_TLS_SECRET_INVALID,
            "not the key of the certificate",
        ),
        ("garbage", "good", Reason.SUBMISSION_TLS_SECRET_INVALID, "not a PEM certificate"),
        ("good", {}, Reason.SUBMISSION_USERS_INVALID, "has no key users.yaml"),
        (
            "good",
            {"users.yaml": b64("app: {password_hash: secret, sender_domains: [a.example]}")},
            Reason.SUBMISSION_USERS_INVALID,
            "user 'app': password_hash is not a scrypt hash",
        ),
        (
            "good",
            {"users.yaml": b64(f"app: {{password_hash: '{hash_password('x')}'}}")},
            Reason.SUBMISSION_USERS_INVALID,
            "user 'app': sender_domains",
        ),
        ("good", {"users.yaml": b64("[a, b")}, Reason.SUBMISSION_USERS_INVALID, "not valid YAML"),
    ],
    ids=[
        "tls-missing",
        "users-missing",
        "tls-empty",
        "tls-wrong-key",
        "tls-not-pem",
        "users-no-key",
        "users-plain-password",
        "users-no-domains",
        "users-bad-yaml",
    ],
)
def test_each_unusable_secret_has_its_reason_and_says_what_to_do(
    tls_data: dict[str, str],
    other_key: str,
    tls: Any,
    users: Any,
    reason: str,
    words: str,
) -> None:
    tls_found = (
        {
            "good": tls_data,
            "other-key": {**tls_data, "tls.key": other_key},
            "garbage": {"tls.crt": b64("not a cert"), "tls.key": b64("nor a key")},
        }.get(tls, tls)
        if isinstance(tls, str)
        else tls
    )
    users_found = {"users.yaml": b64(GOOD_USERS)} if users == "good" else users
    [(got, message)] = problems({"sub-tls": tls_found, "sub-users": users_found})
    assert got == reason
    assert words in message and "spec.submission." in message and "\n" not in message


def test_the_secrets_timer_watches_the_endpoints_secrets() -> None:
    raw = {"submission": {**SUBMISSION}, "dkim": {"secretRef": {"name": "dkim"}}}
    assert secret_names(raw) == ["dkim", "sub-tls", "sub-users"]
    assert secret_names({"submission": "not a mapping"}) == []


def test_the_endpoints_secrets_roll_the_endpoint_and_never_the_relays(
    tls_data: dict[str, str],
) -> None:
    s = spec(
        submission=SUBMISSION,
        kafka={"bootstrapServers": "k:9092", "credentialsSecretRef": {"name": "kafka-login"}},
    )
    found: dict[str, dict[str, str] | None] = {
        "kafka-login": {"username": "u"},
        "sub-tls": tls_data,
        "sub-users": {"users.yaml": b64(GOOD_USERS)},
    }
    relay, endpoint = secrets_digests(s, found)
    new_user = {**found, "sub-users": {"users.yaml": b64(GOOD_USERS + "x: 1\n")}}
    assert secrets_digests(s, new_user)[0] == relay  # the relays keep running
    assert secrets_digests(s, new_user)[1] != endpoint  # the endpoint rolls
    new_login = {**found, "kafka-login": {"username": "v"}}
    assert secrets_digests(s, new_login)[0] != relay  # both mount the Kafka login
    assert secrets_digests(s, new_login)[1] != endpoint
    # a pool without the endpoint hashes what it did before
    plain = spec(
        kafka={"bootstrapServers": "k:9092", "credentialsSecretRef": {"name": "kafka-login"}}
    )
    only = {"kafka-login": {"username": "u"}}
    assert secrets_digests(plain, only) == (secrets_digests(s, found)[0], None)
