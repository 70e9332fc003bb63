"""The operator against the real kube-apiserver and Kafka."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient

from mailpipe.contracts.topics import Topics
from mailpipe.contracts.wire import Disposition, Event, encode
from mailpipe.kafkakit import read_topic

from .conftest import (
    OperatorProcess,
    get,
    kubectl,
    pool_manifest,
    ready_pool,
    wait_for,
    wait_pool_ready,
)

pytestmark = pytest.mark.operator

GOOD_POOL: dict[str, Any] = {
    "kafka": {"bootstrapServers": "k:9092"},
    "egressIPs": [{"address": "127.0.0.2", "helo": "a.sender.test"}],
}
GOOD_CAMPAIGN: dict[str, Any] = {
    "poolRef": "news",
    "from": {"address": "news@sender.test"},
    "subject": "Hello",
    "text": "Hi",
    "audience": {"inline": [{"address": "a@x.test"}]},
}


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


INVALID = [
    ("SendingPool", _with(GOOD_POOL, "egressIPs", []), "spec.egressIPs"),
    (
        "SendingPool",
        _with(GOOD_POOL, "egressIPs", [{"address": "300.1.1.1", "helo": "a.test"}]),
        "spec.egressIPs[0].address",
    ),
    ("SendingPool", _with(GOOD_POOL, "replicas", -1), "spec.replicas"),
    ("SendingPool", _with(GOOD_POOL, "tls", {"mode": "sometimes"}), "spec.tls.mode"),
    # issue 22: a policy asking to verify with a mode that never does
    (
        "SendingPool",
        _with(GOOD_POOL, "tls", {"mode": "opportunistic", "verify": True}),
        "use mode: verify to require a certificate matching the MX name",
    ),
    (
        "SendingPool",
        _with(GOOD_POOL, "tls", {"mode": "opportunistic", "caBundle": {"secret": "ca"}}),
        "tls.caBundle is only used to verify certificates; use mode: verify",
    ),
    # issue 22, DANE: the AD bit means something only from a resolver the pool names
    (
        "SendingPool",
        _with(GOOD_POOL, "tls", {"mode": "dane"}),
        "set dnsNameserver to a DNSSEC-validating resolver",
    ),
    (
        "SendingPool",
        _with(
            _with(GOOD_POOL, "dnsNameserver", "10.0.0.53:53"),
            "tls",
            {"mode": "dane", "verify": True},
        ),
        "contradicts mode dane",
    ),
    (
        "SendingPool",
        _with(GOOD_POOL, "tls", {"mode": "mta-sts", "verify": True}),
        "and mta-sts (each destination's policy decides)",
    ),
    # issue 22, TLS per site: the CEL rules name the site
    (
        "SendingPool",
        _with(GOOD_POOL, "tls", {"sites": {"p.example": {"mode": "mta-sts", "verify": True}}}),
        "tls.sites.p.example: verify: true contradicts mode mta-sts; use mode: verify",
    ),
    (
        "SendingPool",
        _with(GOOD_POOL, "tls", {"sites": {"gmial": {"mode": "verify"}}}),
        "tls.sites.gmial names no domain group defined in domainGroups",
    ),
    (
        "SendingPool",
        _with(GOOD_POOL, "tls", {"sites": {"p.example": {"mode": "dane"}}}),
        "tls.sites.p.example.mode dane trusts the AD bit",
    ),
    (
        "SendingPool",
        _with(GOOD_POOL, "tls", {"sites": {"P.example": {"mode": "verify"}}}),
        "tls.sites.P.example: write the domain in lower case",
    ),
    (
        "SendingPool",
        _with(
            GOOD_POOL,
            "tls",
            {"caBundle": {"secret": "ca"}, "sites": {"p.example": {"mode": "required"}}},
        ),
        "tls.caBundle is only used to verify certificates; use mode: verify or mta-sts "
        "(pool-wide or for a site)",
    ),
    (
        "SendingPool",
        _with(
            GOOD_POOL,
            "warmup",
            {"schedule": [{"day": 1, "dailyLimit": 500}, {"day": 2, "dailyLimit": 100}]},
        ),
        "dailyLimit must not decrease",
    ),
    ("SendingPool", _with(GOOD_POOL, "warmup", {"timeZone": "not a zone"}), "spec.warmup.timeZone"),
    (
        "SendingPool",
        _with(GOOD_POOL, "kafka", {"bootstrapServers": "k:9092", "delaySteps": ["5 minutes"]}),
        "spec.kafka.delaySteps[0]",
    ),
    (
        "SendingPool",
        _with(
            GOOD_POOL,
            "egressIPs",
            [
                {"address": "127.0.0.2", "helo": "a.test"},
                {"address": "127.0.0.2", "helo": "b.test"},
            ],
        ),
        "Duplicate value",
    ),
    (
        "Campaign",
        _with(
            GOOD_CAMPAIGN, "variants", [{"name": "a", "weight": 50}, {"name": "b", "weight": 40}]
        ),
        "variant weights must sum to 100",
    ),
    (
        "Campaign",
        _with(
            GOOD_CAMPAIGN,
            "audience",
            {"inline": [{"address": "a@x.test"}], "configMapRef": {"name": "aud"}},
        ),
        "exactly one of inline or configMapRef",
    ),
    ("Campaign", _with(GOOD_CAMPAIGN, "timeZone", "Mars/Olympus Mons"), "spec.timeZone"),
    (
        "Campaign",
        {k: v for k, v in GOOD_CAMPAIGN.items() if k != "text"},
        "needs a text or an html template",
    ),
    (
        "Campaign",
        _with(GOOD_CAMPAIGN, "sendWindows", [{"days": ["Mon"], "start": "09:00", "end": "09:00"}]),
        "start must differ from end",  # issue 12: 22:00-06:00 is an overnight window
    ),
    ("Campaign", _with(GOOD_CAMPAIGN, "from", {"address": "not-an-address"}), "spec.from.address"),
    # a name, not a path into another namespace (the API server answered 403
    # and the fan-out crashed every 60 s behind "waiting for the pool")
    (
        "Campaign",
        _with(GOOD_CAMPAIGN, "audience", {"configMapRef": {"name": "team-b/x"}}),
        "spec.audience.configMapRef.name",
    ),
    (
        "Campaign",
        _with(GOOD_CAMPAIGN, "audience", {"configMapRef": {"name": "../../team-b/x"}}),
        "spec.audience.configMapRef.name",
    ),
]


@pytest.mark.parametrize(("kind", "spec", "expected"), INVALID, ids=[e for _, _, e in INVALID])
def test_invalid_objects_are_refused_naming_the_field(
    crds: None,
    cli_env: dict[str, str],
    namespace: str,
    kind: str,
    spec: dict[str, Any],
    expected: str,
) -> None:
    body = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "bad", "namespace": namespace},
        "spec": spec,
    }
    refused = kubectl(cli_env, "apply", "-f", "-", stdin=yaml.safe_dump(body))
    assert refused.returncode != 0, f"{kind} was accepted"
    assert expected in refused.stderr, refused.stderr
    good = GOOD_POOL if kind == "SendingPool" else GOOD_CAMPAIGN
    body["spec"] = good
    accepted = kubectl(cli_env, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(body))
    assert accepted.returncode == 0, accepted.stderr  # the same object, valid, is accepted


def test_a_pool_with_tls_sites_is_accepted(
    crds: None, cli_env: dict[str, str], namespace: str
) -> None:
    """Issue 22: per-site TLS, each rule satisfied (a verifying site uses the CA
    bundle, a dane site the pool's resolver, a group site a defined group)."""
    spec = {
        **GOOD_POOL,
        "dnsNameserver": "10.0.0.53:53",
        "domainGroups": {"gmail": ["gmail.com"]},
        "tls": {
            "caBundle": {"secret": "ca"},
            "sites": {
                "gmail": {"mode": "mta-sts"},
                "p.example": {"mode": "required", "verify": True},
                "d.example": {"mode": "dane"},
            },
        },
    }
    body = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": "sites", "namespace": namespace},
        "spec": spec,
    }
    accepted = kubectl(cli_env, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(body))
    assert accepted.returncode == 0, accepted.stderr


def test_a_pool_capping_a_site_during_warmup_is_accepted(
    crds: None, cli_env: dict[str, str], namespace: str
) -> None:
    """Issue 21: a warm-up step caps a group or a site (every domain on Google's
    MX hosts is the site google.com), and the schema lets both through."""
    step = {"day": 1, "dailyLimit": 100, "groupLimits": {"gmail": 10, "google.com": 20}}
    spec = {
        **GOOD_POOL,
        "domainGroups": {"gmail": ["gmail.com"]},
        "warmup": {"schedule": [step]},
    }
    body = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": "warmsites", "namespace": namespace},
        "spec": spec,
    }
    accepted = kubectl(cli_env, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(body))
    assert accepted.returncode == 0, accepted.stderr


def test_a_dane_pool_naming_its_resolver_is_accepted(
    crds: None, cli_env: dict[str, str], namespace: str
) -> None:
    spec = _with(_with(GOOD_POOL, "dnsNameserver", "10.0.0.53:53"), "tls", {"mode": "dane"})
    body = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": "dane", "namespace": namespace},
        "spec": spec,
    }
    accepted = kubectl(cli_env, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(body))
    assert accepted.returncode == 0, accepted.stderr


def _topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def test_pool_children_follow_the_spec_and_go_with_it(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = operator_factory()
    manifest = pool_manifest("news", namespace, kafka_bootstrap, topic_prefix)
    assert kubectl(cli_env, "apply", "-f", "-", stdin=manifest).returncode == 0
    child = "mailpipe-relay-news"
    kinds = ["configmap", "deployment", "service", "poddisruptionbudget"]
    wait_for(lambda: all(get(cli_env, k, child, namespace) for k in kinds), 60, "children", op)
    wait_pool_ready(cli_env, namespace, op)
    # The operator created them before Ready; a metadata answer from a busy
    # broker may trail that by moments (this assert failed on a loaded machine).
    wanted = {f"{topic_prefix}.outbound", f"{topic_prefix}.events", f"{topic_prefix}.delay.1s"}
    wait_for(lambda: wanted <= _topics(kafka_bootstrap), 30, "the pool's topics", op)
    cm = get(cli_env, "configmap", child, namespace)
    dep = get(cli_env, "deployment", child, namespace)
    assert cm is not None and dep is not None
    old_hash = dep["spec"]["template"]["metadata"]["annotations"]["mailpipe.io/config-hash"]
    assert "messages_per_minute: null" in cm["data"]["relay.yaml"]

    edited = pool_manifest(
        "news",
        namespace,
        kafka_bootstrap,
        topic_prefix,
        throttles={"overrides": {"slow.test": {"messagesPerMinute": 60}}},
    )
    assert kubectl(cli_env, "apply", "-f", "-", stdin=edited).returncode == 0

    def rolled() -> bool:
        d = get(cli_env, "deployment", child, namespace) or {}
        return d.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {}).get(
            "mailpipe.io/config-hash"
        ) not in (None, old_hash)

    wait_for(rolled, 60, "deployment config hash to change", op)
    cm = get(cli_env, "configmap", child, namespace)
    assert (
        cm is not None
        and "slow.test" in cm["data"]["relay.yaml"]
        and "messages_per_minute: 60" in cm["data"]["relay.yaml"]
    )

    assert (
        kubectl(cli_env, "delete", "sp", "news", "-n", namespace, "--timeout=60s").returncode == 0
    )
    wait_for(
        lambda: not any(get(cli_env, k, child, namespace) for k in kinds),
        60,
        "children deleted",
        op,
    )


def _apply_audience(env: dict[str, str], namespace: str, csv: str) -> None:
    """The audience ConfigMap "aud" with `csv` as its audience.csv (created or replaced)."""
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "aud", "namespace": namespace},
        "data": {"audience.csv": csv},
    }
    assert kubectl(env, "apply", "-f", "-", stdin=json.dumps(cm)).returncode == 0


def _apply_configmap_campaign(env: dict[str, str], namespace: str, name: str, **spec: Any) -> None:
    """A good Campaign `name` whose audience is the ConfigMap "aud"."""
    body = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "Campaign",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {**_with(GOOD_CAMPAIGN, "audience", {"configMapRef": {"name": "aud"}}), **spec},
    }
    assert kubectl(env, "apply", "-f", "-", stdin=json.dumps(body)).returncode == 0


def _fanout(env: dict[str, str], name: str, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = (get(env, "camp", name, namespace) or {}).get("status", {})
    return dict(status.get("fanout", {}))


def _outbound_ids(bootstrap: str, topic: str, uid: str) -> Counter[str]:
    """Record ids of campaign `uid` as the relays read them (read_committed): a
    chunk aborted by a kill is on the log but never delivered."""
    ids = (json.loads(v)["id"] for _, v in read_topic(bootstrap, topic, committed=True) if v)
    return Counter(i for i in ids if i.startswith(uid))


def test_fanout_of_10k_is_exactly_once_across_an_operator_kill(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    n = 10_000
    op = operator_factory(MAILPIPE_FANOUT_CHUNK="250")
    ready_pool(cli_env, namespace, kafka_bootstrap, topic_prefix, op)
    csv = "address,first\n" + "".join(f"u{i}@d{i % 13}.test,U{i}\n" for i in range(n))
    _apply_audience(cli_env, namespace, csv)
    _apply_configmap_campaign(cli_env, namespace, "big", subject="Hello {{ first }}")

    def fanout() -> dict[str, Any]:
        return _fanout(cli_env, "big", namespace)

    wait_for(lambda: fanout().get("nextIndex", 0) >= 1000, 120, "fan-out under way", op)
    op.kill()
    at_kill = fanout()
    assert at_kill.get("state") == "running", f"fan-out was not killed mid-way: {at_kill}"
    op2 = operator_factory(MAILPIPE_FANOUT_CHUNK="250")
    wait_for(lambda: fanout().get("state") == "done", 180, "fan-out done after restart", op2)

    uid = (get(cli_env, "camp", "big", namespace) or {})["metadata"]["uid"]
    ids = _outbound_ids(kafka_bootstrap, f"{topic_prefix}.outbound", uid)
    assert len(ids) == n
    assert max(ids.values()) == 1, [i for i, c in ids.items() if c > 1][:5]
    assert fanout()["enqueued"] == n


def test_events_drive_counts_and_completion(
    ready_operator: OperatorProcess,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = ready_operator
    camp = _with(
        GOOD_CAMPAIGN, "audience", {"inline": [{"address": f"r{i}@x.test"} for i in range(3)]}
    )
    body = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "Campaign",
        "metadata": {"name": "small", "namespace": namespace},
        "spec": camp,
    }
    assert kubectl(cli_env, "apply", "-f", "-", stdin=json.dumps(body)).returncode == 0
    wait_for(
        lambda: (
            (get(cli_env, "camp", "small", namespace) or {}).get("status", {}).get("phase")
            == "Sending"
        ),
        60,
        "Sending",
        op,
    )
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    key = f"{namespace}/small"
    outcomes = [
        ("r0@x.test", Disposition.DEFERRED, "greylisted"),
        ("r0@x.test", Disposition.DELIVERED, None),
        ("r1@x.test", Disposition.DELIVERED, None),
        ("r2@x.test", Disposition.BOUNCED, "invalid_recipient"),
    ]
    for rcpt, disposition, bounce_class in outcomes:
        event = Event(
            message_id="m",
            campaign=key,
            recipient=rcpt,
            domain="x.test",
            disposition=disposition,
            time=time.time(),
            bounce_class=bounce_class,
        )
        producer.send(f"{topic_prefix}.events", key=key.encode(), value=encode(event))
    producer.flush()
    producer.close()

    def status() -> dict[str, Any]:
        return dict((get(cli_env, "camp", "small", namespace) or {}).get("status", {}))

    wait_for(lambda: status().get("phase") == "Completed", 60, "Completed", op)
    counts = status()["counts"]
    assert (counts["delivered"], counts["bounced"], counts["deferred"], counts["total"]) == (
        2,
        1,
        0,
        3,
    )
    assert status()["progress"] == "100%" and status().get("completedAt")
    # per bounce class, by each recipient's latest disposition (issue 20, item 3)
    assert status()["bouncedByClass"] == {"invalid_recipient": 1}
    assert not status().get("deferredByClass")  # r0's deferral ended delivered
    row = kubectl(cli_env, "get", "camp", "small", "-n", namespace, "--no-headers")
    assert row.stdout.split()[:5] == ["small", "news", "Completed", "2", "1"], row.stdout
    described = kubectl(cli_env, "describe", "camp", "small", "-n", namespace)
    assert "FanoutDone" in described.stdout and "Completed" in described.stdout


def _controls(bootstrap: str, key: str) -> list[str]:
    # campaign control is per namespace (issue 11): the key's namespace's topic
    records = read_topic(bootstrap, Topics.for_pool(key.split("/")[0], "news").control)
    return [json.loads(v)["state"] for k, v in records if v and k == key.encode()]


def test_suspend_and_delete_reach_the_relays_control_topic(
    ready_operator: OperatorProcess,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = ready_operator
    body = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "Campaign",
        "metadata": {"name": "ctl", "namespace": namespace},
        "spec": GOOD_CAMPAIGN,
    }
    assert kubectl(cli_env, "apply", "-f", "-", stdin=json.dumps(body)).returncode == 0
    key = f"{namespace}/ctl"
    patch = kubectl(
        cli_env,
        "patch",
        "camp",
        "ctl",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"suspend":true}}',
    )
    assert patch.returncode == 0, patch.stderr
    wait_for(lambda: "paused" in _controls(kafka_bootstrap, key), 60, "paused published", op)
    wait_for(
        lambda: (
            (get(cli_env, "camp", "ctl", namespace) or {}).get("status", {}).get("phase")
            == "Paused"
        ),
        60,
        "phase Paused",
        op,
    )
    assert (
        kubectl(cli_env, "delete", "camp", "ctl", "-n", namespace, "--timeout=60s").returncode == 0
    )
    wait_for(
        lambda: _controls(kafka_bootstrap, key)[-1:] == ["cancelled"], 60, "cancelled published", op
    )


def test_an_audience_edited_mid_fanout_is_never_resumed_by_position(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    """The fan-out resumes by audience index. Before, a row inserted at the top of
    the ConfigMap while the operator was down shifted every index: the restarted
    fan-out skipped the new first rows' people and mailed the one before its
    resume point twice. Now the resume is refused (Failed, AudienceChanged) and
    restoring the ConfigMap lets it finish, everyone exactly once."""
    n = 3000
    op = operator_factory(MAILPIPE_FANOUT_CHUNK="100")
    ready_pool(cli_env, namespace, kafka_bootstrap, topic_prefix, op)
    original = "address\n" + "".join(f"u{i}@d{i % 13}.test\n" for i in range(n))
    _apply_audience(cli_env, namespace, original)
    _apply_configmap_campaign(cli_env, namespace, "shift")

    def fanout() -> dict[str, Any]:
        return _fanout(cli_env, "shift", namespace)

    wait_for(lambda: fanout().get("nextIndex", 0) >= 500, 120, "fan-out under way", op)
    op.kill()
    assert fanout().get("state") == "running", fanout()
    _apply_audience(
        cli_env, namespace, "address\nnew0@x.test\nnew1@x.test\n" + original.split("\n", 1)[1]
    )
    op2 = operator_factory(MAILPIPE_FANOUT_CHUNK="100")
    wait_for(lambda: fanout().get("state") == "failed", 120, "resume refused", op2)
    assert fanout()["reason"] == "AudienceChanged", fanout()
    assert "audience changed after the fan-out began" in fanout()["message"]

    _apply_audience(cli_env, namespace, original)
    wait_for(lambda: fanout().get("state") == "done", 180, "fan-out done once restored", op2)
    uid = (get(cli_env, "camp", "shift", namespace) or {})["metadata"]["uid"]
    values = [
        json.loads(v) for _, v in read_topic(kafka_bootstrap, f"{topic_prefix}.outbound") if v
    ]
    mine = [r for r in values if r["id"].startswith(uid)]
    addresses = Counter(r["recipients"][0]["address"] for r in mine)
    assert len(addresses) == n and max(addresses.values()) == 1, addresses.most_common(3)
    assert not any(a.startswith("new") for a in addresses)
