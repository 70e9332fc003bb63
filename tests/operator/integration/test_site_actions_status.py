"""Reply rules in the SendingPool (issue 21): a site action its relays hold shows
in the pool's status until it ends; a rule file with a bad pattern or a bad
action is refused whole, with a condition naming the rule, and the relays keep
the rules they had. Against the real kube-apiserver and Kafka, with the
operator as a process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaProducer

from mailpipe.contracts.bounces import ActionKind
from mailpipe.contracts.site_actions import SiteAction, encode_site_action
from mailpipe.devstack.harness import Child, kubectl_ok

from .conftest import get, kubectl, pool_manifest, wait_for, wait_pool_ready

pytestmark = pytest.mark.operator

IP = "127.0.0.2"
STATUS_SECONDS = 90  # Ready, then the status timer (15 s) has read the events topic
SUSPEND_SECONDS = 40  # long enough to be seen in status on a loaded machine
REPLY = (
    "421 4.7.28 [127.0.0.2] Our system has detected an unusual rate of unsolicited mail"
    " originating from your IP address. - gsmtp"
)
CONFIG_MAP = "mailpipe-relay-news"
GOOD = {"bounceClass": "invalid_recipient", "codes": ["550"], "text": "account retired"}
SECOND = {
    "bounceClass": "rate_limited",
    "codes": ["421"],
    "text": "partner throttle",
    "action": {"kind": "suspend", "durationSeconds": 300},
}


def test_a_suspension_shows_in_the_pools_status_until_it_ends(
    operator_factory: Callable[..., Child],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = operator_factory()
    kubectl_ok(
        cli_env,
        "apply",
        "-f",
        "-",
        stdin=pool_manifest("news", namespace, kafka_bootstrap, topic_prefix),
    )
    wait_pool_ready(cli_env, namespace, op)
    now = time.time()
    # What a relay writes when a reply rule suspends google.com for the IP.
    action = SiteAction(
        site="google.com",
        egress_ip=IP,
        action=ActionKind.SUSPEND,
        time=now,
        until=now + SUSPEND_SECONDS,
        reply=REPLY,
        bounce_class="rate_limited",
        relay="relay-a",
    )
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        producer.send(f"{topic_prefix}.events", encode_site_action(action), b"google.com")
        producer.flush()
    finally:
        producer.close()

    def status() -> dict[str, Any]:
        return dict((get(cli_env, "sp", "news", namespace) or {}).get("status") or {})

    wait_for(lambda: bool(status().get("siteActions")), STATUS_SECONDS, "siteActions", op)
    [shown] = status()["siteActions"]
    assert {k: shown[k] for k in ("site", "ip", "action", "after")} == {
        "site": "google.com",
        "ip": IP,
        "action": "suspended",
        "after": REPLY,
    }
    assert shown["until"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(action.until))
    wide = kubectl(cli_env, "get", "sp", "news", "-n", namespace, "-o", "wide").stdout
    assert f"google.com suspended on {IP} until " in wide, wide

    # It ends on time: gone from the status at the next report after its end.
    wait_for(
        lambda: status().get("siteActions") == [],
        SUSPEND_SECONDS + STATUS_SECONDS,
        "siteActions empty after the suspension",
        op,
    )
    assert status()["siteActionsSummary"] == ""


def _ready(pool: dict[str, Any] | None) -> dict[str, Any]:
    conditions = (pool or {}).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c.get("type") == "Ready"), {})


@pytest.mark.parametrize(
    ("bad", "names"),
    [
        ({**SECOND, "text": "(partner"}, "spec.bounces.rules[2].text: text is not a regular"),
        (
            {**SECOND, "action": {"kind": "slow", "durationSeconds": 300}},
            "spec.bounces.rules[2].action: a slow action needs messagesPerMinute",
        ),
    ],
    ids=["bad-pattern", "bad-action"],
)
def test_a_rule_file_with_a_bad_rule_is_refused_whole_with_a_condition(
    bad: dict[str, Any],
    names: str,
    operator_factory: Callable[..., Child],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = operator_factory()

    def apply(rules: list[dict[str, Any]]) -> None:
        manifest = pool_manifest(
            "news", namespace, kafka_bootstrap, topic_prefix, bounces={"rules": rules}
        )
        kubectl_ok(cli_env, "apply", "-f", "-", stdin=manifest)

    def config() -> str:
        data = (get(cli_env, "configmap", CONFIG_MAP, namespace) or {}).get("data") or {}
        return str(data.get("relay.yaml", ""))

    apply([GOOD])
    wait_pool_ready(cli_env, namespace, op)
    before = config()
    assert "account retired" in before

    # A good new rule beside a bad one: nothing of the edit reaches the relays.
    apply([GOOD, {**SECOND, "text": "another partner"}, bad])
    pool = lambda: get(cli_env, "sp", "news", namespace)  # noqa: E731
    wait_for(
        lambda: _ready(pool()).get("reason") == "InvalidBounceRules",
        60,
        "Ready=False InvalidBounceRules",
        op,
    )
    ready = _ready(pool())
    assert ready["status"] == "False" and names in ready["message"], ready
    assert "\n" not in ready["message"]
    assert config() == before  # the relays keep the rules they had, whole
    warnings = kubectl_ok(
        cli_env, "get", "events", "-n", namespace, "--field-selector",
        "reason=InvalidBounceRules", "-o", "json",
    )  # fmt: skip
    assert names in warnings
