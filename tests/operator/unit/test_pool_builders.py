"""Table tests of the pure SendingPool builders."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mailpipe.contracts.config import parse_config
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import (
    HASH_ANNOTATION,
    PoolRef,
    build_children,
    build_relay_config,
    topics,
)

REF = PoolRef("news", "mail", "uid-1")


def spec(**extra: Any) -> SendingPoolSpec:
    base: dict[str, Any] = {
        "kafka": {"bootstrapServers": "kafka:9092"},
        "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com", "warmup": True}],
    }
    base.update(extra)
    return SendingPoolSpec.model_validate(base)


def test_relay_config_round_trips_through_the_relays_parser() -> None:
    s = spec(
        throttles={"overrides": {"gmail.com": {"messagesPerMinute": 600}}},
        warmup={"schedule": [{"day": 1, "dailyLimit": 50}, {"day": 2, "dailyLimit": 100}]},
        dkim={"domain": "example.com", "selector": "s1", "secretRef": {"name": "dkim"}},
    )
    text, _ = build_children(REF, s)
    config = parse_config(text)
    assert config == build_relay_config(REF, s)
    assert config.kafka.outbound_topic == "mailpipe.mail.news.outbound"
    assert config.kafka.group_id == "mailpipe.mail.news.relays"
    assert config.throttle_for("gmail.com").messages_per_minute == 600
    assert config.warmup.schedule[1].daily_limit == 100
    assert (
        config.dkim is not None and config.dkim.private_key_path == "/etc/mailpipe/dkim/private.pem"
    )


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("ConfigMap", lambda o: "relay.yaml" in o["data"]),
        (
            "Deployment",
            lambda o: o["spec"]["template"]["spec"]["containers"][0]["args"][0] == "relay",
        ),
        ("Service", lambda o: o["spec"]["ports"][0]["name"] == "metrics"),
        ("PodDisruptionBudget", lambda o: o["spec"]["maxUnavailable"] == 1),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_children_are_owned_labelled_and_shaped(kind: str, check: Any) -> None:
    _, children = build_children(REF, spec())
    [obj] = [c for c in children if c["kind"] == kind]
    meta = obj["metadata"]
    assert meta["name"] == "mailpipe-relay-news" and meta["namespace"] == "mail"
    [owner] = meta["ownerReferences"]
    assert owner["kind"] == "SendingPool" and owner["uid"] == "uid-1" and owner["controller"]
    assert meta["labels"]["mailpipe.io/pool"] == "news"
    assert check(obj)


def test_config_hash_rolls_pods_only_when_config_changes() -> None:
    def pod_hash(s: SendingPoolSpec) -> str:
        _, children = build_children(REF, s)
        dep = next(c for c in children if c["kind"] == "Deployment")
        annotations: dict[str, str] = dep["spec"]["template"]["metadata"]["annotations"]
        return annotations[HASH_ANNOTATION]

    same = pod_hash(spec()) == pod_hash(spec())
    throttled = pod_hash(spec(throttles={"default": {"messagesPerMinute": 30}}))
    assert same and throttled != pod_hash(spec())
    assert pod_hash(spec(replicas=3)) == pod_hash(spec())  # scaling is not a config change


def test_dkim_secret_is_mounted_and_topics_follow_the_prefix() -> None:
    s = spec(
        dkim={"domain": "example.com", "selector": "s1", "secretRef": {"name": "dkim-key"}},
        kafka={
            "bootstrapServers": "k:9092",
            "topicPrefix": "mailpipe.mail.pool7",
            "delaySteps": ["1m", "1h"],
        },
    )
    _, children = build_children(REF, s)
    dep = next(c for c in children if c["kind"] == "Deployment")
    volumes = dep["spec"]["template"]["spec"]["volumes"]
    assert {"name": "dkim", "secret": {"secretName": "dkim-key"}} in volumes
    t = topics(REF, s)
    assert t.all() == [
        "mailpipe.mail.pool7.outbound",
        "mailpipe.mail.pool7.events",
        "mailpipe.mail.pool7.dlq",
        "mailpipe.mail.pool7.delay.1m",
        "mailpipe.mail.pool7.delay.1h",
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"warmup": {"schedule": [{"day": 1, "dailyLimit": 5, "groupLimits": {"big": 1}}]}},
            "groupLimits.big names no domain group",
        ),
        (
            {
                "egressIPs": [
                    {"address": "10.0.0.5", "helo": "a.example.com"},
                    {"address": "10.0.0.5", "helo": "b.example.com"},
                ]
            },
            "egress addresses must be unique",
        ),
        ({"kafka": {"bootstrapServers": "k:9092", "delaySteps": ["5 minutes"]}}, "delay step"),
        ({"warmup": {"timeZone": "Mars/Olympus_Mons"}}, "unknown time zone"),
    ],
    ids=["unknown-warmup-group", "duplicate-egress", "bad-delay-step", "unknown-time-zone"],
)
def test_a_spec_the_relay_would_refuse_is_refused_when_parsed(
    extra: dict[str, Any], message: str
) -> None:
    # The handler turns this ValidationError into Ready=False (InvalidSpec); it never
    # gets as far as rendering a relay config that the relay would refuse.
    with pytest.raises(ValidationError, match=message):
        spec(**extra)


@pytest.mark.parametrize(
    ("bundle", "volume"),
    [
        ({"secret": "private-ca"}, {"name": "tls-ca", "secret": {"secretName": "private-ca"}}),
        (
            {"configMap": "private-ca", "key": "bundle.pem"},
            {"name": "tls-ca", "configMap": {"name": "private-ca"}},
        ),
    ],
    ids=["secret", "configmap"],
)
def test_a_ca_bundle_is_mounted_and_its_path_reaches_the_relay(
    bundle: dict[str, str], volume: dict[str, Any]
) -> None:
    """Issue 22 finding 2: a pool trusts a private CA from its own Secret or ConfigMap."""
    s = spec(tls={"mode": "verify", "caBundle": bundle})
    text, children = build_children(REF, s)
    pod = next(c for c in children if c["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert volume in pod["volumes"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "tls-ca", "mountPath": "/etc/mailpipe/tls-ca", "readOnly": True} in mounts
    key = bundle.get("key", "ca.crt")
    assert parse_config(text).tls.ca_file == f"/etc/mailpipe/tls-ca/{key}"


def test_a_pool_without_a_ca_bundle_keeps_its_config_text() -> None:
    # No `ca_file: null` in the config: pools that do not use it do not roll.
    text, _ = build_children(REF, spec())
    assert "ca_file" not in text


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"mode": "opportunistic", "verify": True}, "use mode: verify"),
        ({"mode": "none", "verify": True}, "use mode: verify"),
        ({"mode": "opportunistic", "caBundle": {"secret": "ca"}}, "use mode: verify"),
        ({"mode": "required", "caBundle": {"secret": "ca"}}, "use mode: verify"),
        ({"mode": "verify", "caBundle": {"secret": "ca", "configMap": "ca"}}, "exactly one"),
        ({"mode": "verify", "caBundle": {}}, "exactly one"),
    ],
    ids=["opportunistic+verify", "none+verify", "ca-opportunistic", "ca-unverified", "two", "none"],
)
def test_contradictory_tls_is_refused_naming_the_mode_to_use(
    tls: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(tls=tls)


def test_the_unsubscribe_endpoint_reaches_the_relay_with_its_keys_mounted() -> None:
    from mailpipe.operator.validation import secret_names, secret_refs

    raw = {"baseUrl": "https://unsub.example.com/u/", "keySecret": "feedback-keys"}
    s = spec(unsubscribe=raw)
    text, children = build_children(REF, s)
    config = parse_config(text)
    assert config.unsubscribe is not None
    assert config.unsubscribe.base_url == "https://unsub.example.com/u/"
    pod = next(c for c in children if c["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert {"name": "unsubscribe-keys", "secret": {"secretName": "feedback-keys"}} in pod["volumes"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {m["mountPath"] for m in mounts if m["name"] == "unsubscribe-keys"} == {
        config.unsubscribe.keys_dir
    }
    assert [r.name for r in secret_refs(s)] == ["feedback-keys"]
    assert secret_names({"unsubscribe": raw}) == ["feedback-keys"]
    # a pool without it keeps its config text (and its pods)
    assert "unsubscribe" not in build_children(REF, spec())[0]


@pytest.mark.parametrize(
    "base_url",
    ["http://unsub.example.com/u/", "https://unsub.example.com/u"],
    ids=["not-https", "no-trailing-slash"],
)
def test_an_unsubscribe_base_url_must_be_https_and_end_in_a_slash(base_url: str) -> None:
    with pytest.raises(ValidationError, match=r"baseUrl|base_url"):
        spec(unsubscribe={"baseUrl": base_url, "keySecret": "k"})
