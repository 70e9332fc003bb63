"""Campaign integrity on the real kube-apiserver and Kafka (issue 12, deliverables 1, 4, 9).

Each test is a "tried as a new user would" finding: it failed on the code
before issue 12 and passes after. The audience is checked whole (parsed,
normalised, de-duplicated, validated, rendered) before the first record is
produced, and a template that errors, loops or explodes fails its Campaign
within seconds without holding up the fan-out of other Campaigns.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
from kafka import KafkaProducer

from mailpipe.contracts.wire import Disposition, Event, encode
from mailpipe.kafkakit import read_topic

from .conftest import OperatorProcess, get, kubectl, wait_for

pytestmark = pytest.mark.operator

CAMPAIGN: dict[str, Any] = {
    "poolRef": "news",
    "from": {"address": "news@sender.test"},
    "subject": "Hello",
    "text": "Hi",
    "audience": {"inline": [{"address": "a@x.test"}]},
}
FAILED_WITHIN_SECONDS = 90  # generous for a loaded 2-core machine; before, never


def _apply(env: dict[str, str], obj: dict[str, Any], *flags: str) -> Any:
    return kubectl(env, "apply", *flags, "-f", "-", stdin=json.dumps(obj))


def _campaign(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "Campaign",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {**CAMPAIGN, **spec},
    }


def _status(env: dict[str, str], name: str, namespace: str) -> dict[str, Any]:
    return dict((get(env, "camp", name, namespace) or {}).get("status", {}))


def _outbound(bootstrap: str, topic: str, uid: str) -> list[dict[str, Any]]:
    values = (json.loads(v) for _, v in read_topic(bootstrap, topic) if v)
    return [r for r in values if r["id"].startswith(uid)]


def _uid(env: dict[str, str], name: str, namespace: str) -> str:
    return str((get(env, "camp", name, namespace) or {})["metadata"]["uid"])


def test_duplicate_recipients_get_one_message_and_the_campaign_completes(
    ready_operator: OperatorProcess,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = ready_operator
    audience = {"inline": [{"address": a} for a in ("dup@x.test", "dup@x.test", "DUP@x.test")]}
    assert _apply(cli_env, _campaign("dups", namespace, audience=audience)).returncode == 0
    wait_for(
        lambda: _status(cli_env, "dups", namespace).get("fanout", {}).get("state") == "done",
        60,
        "fan-out done",
        op,
    )
    records = _outbound(
        kafka_bootstrap, f"{topic_prefix}.outbound", _uid(cli_env, "dups", namespace)
    )
    addresses = Counter(r["recipients"][0]["address"] for r in records)
    assert addresses == Counter({"dup@x.test": 1}), addresses

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    key = f"{namespace}/dups"
    event = Event(
        message_id=records[0]["id"],
        campaign=key,
        recipient="dup@x.test",
        domain="x.test",
        disposition=Disposition.DELIVERED,
        time=time.time(),
    )
    producer.send(f"{topic_prefix}.events", key=key.encode(), value=encode(event))
    producer.flush()
    producer.close()
    wait_for(
        lambda: _status(cli_env, "dups", namespace).get("phase") == "Completed",
        60,
        "Completed (before: Sending 33% forever)",
        op,
    )
    status = _status(cli_env, "dups", namespace)
    assert status["progress"] == "100%"
    assert (status["counts"]["total"], status["counts"]["deduplicated"]) == (1, 2)
    assert status["audience"]["deduplicated"] == 2


def test_a_bad_row_never_causes_a_partial_send(
    ready_operator: OperatorProcess,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = ready_operator
    rows = "".join(f"u{i}@d{i % 13}.test,{'' if i == 2201 else f'U{i}'}\n" for i in range(1, 2501))
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "aud", "namespace": namespace},
        "data": {"audience.csv": "address,first\n" + rows},
    }
    assert _apply(cli_env, cm).returncode == 0
    camp = _campaign(
        "rows", namespace, subject="Hello {{ first }}", audience={"configMapRef": {"name": "aud"}}
    )
    assert _apply(cli_env, camp).returncode == 0
    wait_for(lambda: _status(cli_env, "rows", namespace).get("phase") == "Failed", 90, "Failed", op)
    records = _outbound(
        kafka_bootstrap, f"{topic_prefix}.outbound", _uid(cli_env, "rows", namespace)
    )
    assert records == [], f"{len(records)} records sent before the bad row was found"
    status = _status(cli_env, "rows", namespace)
    assert "line 2202" in status["fanout"]["message"], status["fanout"]
    failed = [c for c in status.get("conditions", []) if c["type"] == "Failed"]
    assert failed and failed[0]["status"] == "True" and failed[0]["reason"] == "InvalidAudience"
    described = kubectl(cli_env, "describe", "camp", "rows", "-n", namespace).stdout
    assert "Warning" in described and "line 2202" in described


NESTED_LOOP = (
    "{% set r = range(100000)|list %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}"
)
BAD_TEMPLATES = {
    "div": "{{ 1/0 }}",
    "range": "{{ range(10**9)|length }}",
    "macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "huge": "{{ 'x' * 100000000 }}",
    **{f"loop{i}": NESTED_LOOP for i in range(8)},  # as many as the operator's fan-out threads
}


def test_bad_templates_fail_within_seconds_and_never_hold_up_another_campaign(
    ready_operator: OperatorProcess,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = ready_operator
    for name, template in BAD_TEMPLATES.items():
        assert _apply(cli_env, _campaign(name, namespace, text=template)).returncode == 0
    # The bad ones take the fan-out threads first: every one of them has been
    # seen by the operator (its spec accepted) before the good one is applied.
    wait_for(
        lambda: all("observedGeneration" in _status(cli_env, n, namespace) for n in BAD_TEMPLATES),
        FAILED_WITHIN_SECONDS,
        "the operator to accept every bad campaign",
        op,
    )
    assert _apply(cli_env, _campaign("good", namespace)).returncode == 0
    wait_for(
        lambda: _status(cli_env, "good", namespace).get("fanout", {}).get("state") == "done",
        FAILED_WITHIN_SECONDS,
        "the good campaign fanned out",
        op,
    )

    def all_failed() -> bool:
        return all(_status(cli_env, n, namespace).get("phase") == "Failed" for n in BAD_TEMPLATES)

    wait_for(all_failed, FAILED_WITHIN_SECONDS, "every bad campaign Failed", op)
    for name in BAD_TEMPLATES:
        status = _status(cli_env, name, namespace)
        failed = [c for c in status.get("conditions", []) if c["type"] == "Failed"]
        assert failed and failed[0]["status"] == "True", (name, status)
        assert failed[0]["reason"] in ("TemplateError", "RenderLimitExceeded"), (name, failed)
        described = kubectl(cli_env, "describe", "camp", name, "-n", namespace).stdout
        assert "Warning" in described and "FanoutFailed" in described, (name, described)
        uid = _uid(cli_env, name, namespace)
        assert _outbound(kafka_bootstrap, f"{topic_prefix}.outbound", uid) == []


def test_overnight_windows_and_every_iana_zone_are_accepted(
    crds: None, cli_env: dict[str, str], namespace: str
) -> None:
    overnight = [{"days": ["Mon", "Fri"], "start": "22:00", "end": "06:00"}]
    for zone_name in ("CET", "Etc/GMT+5", "EST5EDT", "America/Argentina/Buenos_Aires"):
        camp = _campaign(
            "zones",
            namespace,
            timeZone=zone_name,
            sendWindows=overnight,
            audience={"inline": [{"address": "a@x.test", "timeZone": zone_name}]},
        )
        accepted = _apply(cli_env, camp, "--dry-run=server")
        assert accepted.returncode == 0, (zone_name, accepted.stderr)
    empty = _campaign(
        "zones", namespace, sendWindows=[{"days": ["Mon"], "start": "09:00", "end": "09:00"}]
    )
    refused = _apply(cli_env, empty, "--dry-run=server")
    assert refused.returncode != 0 and "start must differ from end" in refused.stderr


def test_a_fixed_failed_campaign_resumes_without_sending_anyone_twice(
    ready_operator: OperatorProcess,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = ready_operator
    audience = {
        "inline": [
            {"address": "a@x.test", "merge": {"first": "A"}},
            {"address": "b@x.test"},  # no first name: the subject cannot render
            {"address": "c@x.test", "merge": {"first": "C"}},
        ]
    }
    camp = _campaign("fix", namespace, subject="Hello {{ first }}", audience=audience)
    assert _apply(cli_env, camp).returncode == 0
    wait_for(lambda: _status(cli_env, "fix", namespace).get("phase") == "Failed", 60, "Failed", op)
    assert _status(cli_env, "fix", namespace)["observedGeneration"] == 1
    fixed = json.dumps({"spec": {"subject": "Hello {{ first|default('friend') }}"}})
    patched = kubectl(cli_env, "patch", "camp", "fix", "-n", namespace, "--type=merge", "-p", fixed)
    assert patched.returncode == 0, patched.stderr
    wait_for(
        lambda: _status(cli_env, "fix", namespace).get("fanout", {}).get("state") == "done",
        60,
        "fan-out resumed and done (before: Failed with the old message for good)",
        op,
    )
    records = _outbound(
        kafka_bootstrap, f"{topic_prefix}.outbound", _uid(cli_env, "fix", namespace)
    )
    assert sorted(r["recipients"][0]["address"] for r in records) == [
        "a@x.test",
        "b@x.test",
        "c@x.test",
    ]
    assert sorted(r["content"]["subject"] for r in records) == [
        "Hello A",
        "Hello C",
        "Hello friend",
    ]
    wait_for(
        lambda: _status(cli_env, "fix", namespace).get("phase") == "Sending", 30, "Sending", op
    )
    status = _status(cli_env, "fix", namespace)
    assert status["observedGeneration"] == 2
    failed = [c for c in status["conditions"] if c["type"] == "Failed"]
    assert failed[0]["status"] == "False", failed
    described = kubectl(cli_env, "describe", "camp", "fix", "-n", namespace).stdout
    assert "FanoutResumed" in described


def _audience_cm(namespace: str, csv: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "aud", "namespace": namespace},
        "data": {"audience.csv": csv},
    }


def test_fixing_the_audience_configmap_is_enough_to_resume(
    ready_operator: OperatorProcess,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    """Before, a campaign Failed on its audience ConfigMap (missing, or a bad row)
    stayed Failed after the ConfigMap was created or fixed, until its spec was
    edited too: the fan-out is re-armed on Campaign changes only."""
    op = ready_operator
    camp = _campaign(
        "cmfix", namespace, subject="Hello {{ first }}", audience={"configMapRef": {"name": "aud"}}
    )
    assert _apply(cli_env, camp).returncode == 0

    def fanout() -> dict[str, Any]:
        return dict(_status(cli_env, "cmfix", namespace).get("fanout", {}))

    wait_for(lambda: fanout().get("state") == "failed", 60, "Failed: no ConfigMap", op)
    assert "audience ConfigMap aud not found" in fanout()["message"]

    rows = [f"u{i}@d{i % 7}.test,{'' if i == 201 else f'U{i}'}\n" for i in range(1, 301)]
    assert (
        _apply(cli_env, _audience_cm(namespace, "address,first\n" + "".join(rows))).returncode == 0
    )
    wait_for(
        lambda: "line 202" in str(fanout().get("message")),
        60,
        "checked again once the ConfigMap exists: Failed on its bad row",
        op,
    )
    uid = _uid(cli_env, "cmfix", namespace)
    assert _outbound(kafka_bootstrap, f"{topic_prefix}.outbound", uid) == []

    rows[200] = "u201@d5.test,U201\n"
    assert (
        _apply(cli_env, _audience_cm(namespace, "address,first\n" + "".join(rows))).returncode == 0
    )
    wait_for(
        lambda: fanout().get("state") == "done", 60, "fan-out done after the row was fixed", op
    )
    records = _outbound(kafka_bootstrap, f"{topic_prefix}.outbound", uid)
    addresses = Counter(r["recipients"][0]["address"] for r in records)
    assert len(addresses) == 300 and max(addresses.values()) == 1
    status = _status(cli_env, "cmfix", namespace)
    assert status["observedGeneration"] == 1  # no spec edit was needed
    described = kubectl(cli_env, "describe", "camp", "cmfix", "-n", namespace).stdout
    assert "AudienceChanged" in described
