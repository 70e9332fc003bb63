"""The feedback receiver's Deployment and Service, rendered for a pool with spec.feedback."""

from __future__ import annotations

from typing import Any

import yaml

from mailpipe.contracts.config import parse_config
from mailpipe.contracts.signing import ConfigSigner
from mailpipe.inbound.unsubscribe import EndpointSettings
from mailpipe.operator.child_drift import guarded
from mailpipe.operator.config_signing import PUBLIC_KEY_ENV, SIGNATURE_KEY, signed
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import (
    HASH_ANNOTATION,
    SECRETS_HASH_ANNOTATION,
    PoolRef,
    build_children,
    stale_children,
)

REF = PoolRef("news", "mail", "uid-1")
FEEDBACK = {"bounceDomain": "bounces.example.com", "keySecretRef": {"name": "fb-keys"}}


def spec(**extra: Any) -> SendingPoolSpec:
    base: dict[str, Any] = {
        "kafka": {"bootstrapServers": "kafka:9092"},
        "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
        "dkim": {"domain": "example.com", "selector": "s1", "secretRef": {"name": "dkim"}},
    }
    base.update(extra)
    return SendingPoolSpec.model_validate(base)


def named(children: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [obj] = [c for c in children if c["kind"] == kind and c["metadata"]["name"] == name]
    return obj


def test_a_pool_without_feedback_renders_what_it_did_before() -> None:
    text, children = build_children(REF, spec())
    assert [(c["kind"], c["metadata"]["name"]) for c in children] == [
        ("ConfigMap", "mailpipe-relay-news"),
        ("Deployment", "mailpipe-relay-news"),
        ("Service", "mailpipe-relay-news"),
        ("PodDisruptionBudget", "mailpipe-relay-news"),
    ]
    assert "feedback" not in text
    # every endpoint child is stale: a reconcile deletes any left from before
    assert stale_children(REF, children) == [
        ("Deployment", "mailpipe-feedback-news"),
        ("Service", "mailpipe-feedback-news"),
        ("Deployment", "mailpipe-unsubscribe-news"),
        ("Service", "mailpipe-unsubscribe-news"),
        ("ConfigMap", "mailpipe-unsubscribe-news"),
        ("Deployment", "mailpipe-submission-news"),
        ("Service", "mailpipe-submission-news"),
        ("ConfigMap", "mailpipe-submission-news"),
    ]


def test_feedback_renders_a_restricted_receiver_on_the_pools_own_config() -> None:
    s = spec(
        feedback={**FEEDBACK, "replicas": 2},
        kafka={
            "bootstrapServers": "kafka:9093",
            "securityProtocol": "SASL_PLAINTEXT",
            "saslMechanism": "PLAIN",
            "credentialsSecretRef": {"name": "kafka-login"},
        },
    )
    text, children = build_children(REF, s, secrets_digest="s1")
    config = parse_config(text)
    assert config.feedback is not None
    assert [k for k, n in stale_children(REF, children) if "feedback" in n] == []
    # the relay Deployment stays the first one (the reconcile's `deployment`)
    assert next(c for c in children if c["kind"] == "Deployment")["metadata"]["name"] == (
        "mailpipe-relay-news"
    )

    dep = named(children, "Deployment", "mailpipe-feedback-news")
    meta = dep["metadata"]
    [owner] = meta["ownerReferences"]
    assert owner["kind"] == "SendingPool" and owner["uid"] == "uid-1" and owner["controller"]
    assert meta["labels"]["app.kubernetes.io/component"] == "feedback"
    assert dep["spec"]["replicas"] == 2
    template = dep["spec"]["template"]
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "feedback"
    assert dep["spec"]["selector"]["matchLabels"] == {
        "mailpipe.io/pool": "news",
        "app.kubernetes.io/component": "feedback",
    }
    relay = named(children, "Deployment", "mailpipe-relay-news")
    # same config, same Secrets: a changed config or rotated key rolls both
    assert template["metadata"]["annotations"] == {
        HASH_ANNOTATION: relay["spec"]["template"]["metadata"]["annotations"][HASH_ANNOTATION],
        SECRETS_HASH_ANNOTATION: "s1",
    }
    pod = template["spec"]
    assert "hostNetwork" not in pod and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["args"] == ["feedback", "--config", "/etc/mailpipe/relay.yaml"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert not sc["allowPrivilegeEscalation"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"smtp": config.feedback.listen_port, "metrics": config.feedback.metrics_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"]["port"] == "metrics"
    # only what the receiver reads: config, token keys, Kafka login; never the DKIM key
    assert {v["name"]: v.get("secret") or v.get("configMap") for v in pod["volumes"]} == {
        "config": {"name": "mailpipe-relay-news"},
        "feedback-keys": {"secretName": "fb-keys"},
        "kafka-credentials": {"secretName": "kafka-login"},
    }
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert all(m["readOnly"] for m in mounts.values())
    assert config.feedback.keys_path in mounts
    assert config.kafka.security.password_file is not None
    assert config.kafka.security.password_file.startswith(
        next(p for p, m in mounts.items() if m["name"] == "kafka-credentials")
    )

    svc = named(children, "Service", "mailpipe-feedback-news")
    assert svc["metadata"]["ownerReferences"] == meta["ownerReferences"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    # port 25, and the metrics the chart's ServiceMonitor scrapes (by port name)
    assert svc["spec"]["ports"] == [
        {"name": "smtp", "port": 25, "targetPort": "smtp"},
        {"name": "metrics", "port": config.feedback.metrics_port, "targetPort": "metrics"},
    ]


def test_the_receiver_fields_stay_out_of_the_relay_config() -> None:
    # The relays' config (and so their pods) is what it was before the receiver
    # was rendered: its replicas are the operator's business, not the relays'.
    text, _ = build_children(REF, spec(feedback=FEEDBACK))
    again, _ = build_children(REF, spec(feedback={**FEEDBACK, "replicas": 3}))
    assert text == again
    assert "replicas" not in text


def test_unsubscribe_renders_its_endpoint_with_settings_it_accepts() -> None:
    s = spec(unsubscribe={"baseUrl": "https://unsub.example.com/u/", "keySecret": "u-keys"})
    text, children = build_children(REF, s, secrets_digest="s1")
    config = parse_config(text)
    assert config.unsubscribe is not None
    cm = named(children, "ConfigMap", "mailpipe-unsubscribe-news")
    # the endpoint's own parser takes what the operator renders
    settings = EndpointSettings.model_validate(yaml.safe_load(cm["data"]["unsubscribe.yaml"]))
    assert settings.namespace == "mail" and settings.keys_dir == config.unsubscribe.keys_dir
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.suppressions_topic == config.kafka.suppressions_topic
    assert settings.events_topic("news") == config.kafka.events_topic
    dep = named(children, "Deployment", "mailpipe-unsubscribe-news")
    assert dep["spec"]["replicas"] == 1
    pod = dep["spec"]["template"]["spec"]
    assert "hostNetwork" not in pod and pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["args"] == ["unsubscribe", "--config", "/etc/mailpipe/unsubscribe.yaml"]
    assert container["securityContext"]["readOnlyRootFilesystem"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.port, "metrics": settings.metrics_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {v["name"]: v.get("secret") or v.get("configMap") for v in pod["volumes"]} == {
        "config": {"name": "mailpipe-unsubscribe-news"},
        "unsubscribe-keys": {"secretName": "u-keys"},
    }
    assert all(m["readOnly"] for m in container["volumeMounts"])
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations[SECRETS_HASH_ANNOTATION] == "s1"
    svc = named(children, "Service", "mailpipe-unsubscribe-news")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http"},
        {"name": "metrics", "port": settings.metrics_port, "targetPort": "metrics"},
    ]
    for obj in (cm, dep, svc):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert [n for _, n in stale_children(REF, children) if "unsubscribe" in n] == []


def test_only_the_relays_children_carry_the_config_signature() -> None:
    signer = ConfigSigner.generate()
    s = spec(
        feedback=FEEDBACK,
        unsubscribe={"baseUrl": "https://unsub.example.com/u/", "keySecret": "u-keys"},
    )
    text, children = build_children(REF, s)
    out = signed(children, text, signer)
    for child in out:
        relay = child["metadata"]["name"] == "mailpipe-relay-news"
        if child["kind"] == "ConfigMap":
            assert (SIGNATURE_KEY in child["data"]) is relay
        if child["kind"] == "Deployment":
            [container] = child["spec"]["template"]["spec"]["containers"]
            names = {e["name"] for e in container["env"]}
            assert (PUBLIC_KEY_ENV in names) is relay


def test_the_children_timer_guards_every_child_but_the_relay_deployment() -> None:
    s = spec(
        feedback=FEEDBACK,
        unsubscribe={"baseUrl": "https://unsub.example.com/u/", "keySecret": "u-keys"},
    )
    _, children = build_children(REF, s)
    unguarded = [(c["kind"], c["metadata"]["name"]) for c in children if not guarded(c)]
    assert unguarded == [("Deployment", "mailpipe-relay-news")]  # handlers.relays watches it
