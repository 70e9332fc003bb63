"""Day-2 actions and clean deletion on the real apiserver and Kafka (issue 12, points 5 and 6).

The kubectl plugin runs as users run it: `kubectl mailpipe ...`, kubectl
finding the `kubectl-mailpipe` executable on PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaProducer

from mailpipe.contracts.topics import Topics, owned_topics
from mailpipe.contracts.wire import Disposition, Event, Suppression, SuppressionReason, encode
from mailpipe.devstack.harness import Child
from mailpipe.devstack.procs import free_port
from mailpipe.kafkakit import list_topics, read_topic

from .conftest import get, kubectl, pool_manifest, wait_for, wait_pool_ready

pytestmark = pytest.mark.operator

PLUGIN_BIN = Path(sys.executable).parent  # where the venv installed `kubectl-mailpipe`
DELETE_SECONDS = 60  # finalizers: children, then topic deletion on Kafka
FINALIZER = "mailpipe.io/finalizer"
# Deletion against a dead Kafka: the fan-out daemon stopping (<= 30 s), a first
# attempt (the Kafka client's 30 s bootstrap timeout), the 15 s retry delay past
# the 5 s give-up, and a loaded machine's slack.
GIVE_UP_TEST_SECONDS = 180


def plugin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl mailpipe <args>`: kubectl finds the plugin on PATH."""
    path = f"{PLUGIN_BIN}{os.pathsep}{env.get('PATH', '')}"
    return kubectl({**env, "PATH": path}, "mailpipe", *args)


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def _suppressions(namespace: str) -> str:
    """The namespace's suppression topic (issue 11: suppressions are per namespace)."""
    return Topics.for_pool(namespace, "news").suppressions


def _live_suppressions(bootstrap: str, topic: str) -> dict[str, bytes]:
    live: dict[str, bytes] = {}
    for key, value in read_topic(bootstrap, topic):
        if key is None:
            continue
        if value is None:
            live.pop(key.decode(), None)
        else:
            live[key.decode()] = value
    return live


def test_suppressions_are_added_listed_and_lifted_with_the_plugin(
    ready_operator: Child,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    unique: str,
) -> None:
    added, other = f"added-{unique}@x.test", f"Bob-{unique}@X.test"
    # A suppression another producer keyed by its mixed-case spelling.
    mixed = Suppression(
        address=other, reason=SuppressionReason.HARD_BOUNCE, time=time.time(), source="inbound"
    )
    _produce(kafka_bootstrap, _suppressions(namespace), [(other.encode(), encode(mixed))])

    out = plugin(cli_env, "suppress", added, "-n", namespace, "--detail", "asked by phone")
    assert out.returncode == 0, out.stderr  # --pool left out: the namespace's only pool
    assert f"suppressed {added}" in out.stdout

    out = plugin(cli_env, "suppressions", "list", "-n", namespace, "-o", "json")
    assert out.returncode == 0, out.stderr
    listed = {e["key"]: e for e in json.loads(out.stdout)}
    assert listed[added]["reason"] == "manual"
    assert listed[added]["detail"] == "asked by phone"
    assert listed[other]["reason"] == "hard_bounce"

    out = plugin(cli_env, "unsuppress", other.lower(), added, "-n", namespace, "--pool", "news")
    assert out.returncode == 0, out.stderr + out.stdout
    live = _live_suppressions(kafka_bootstrap, _suppressions(namespace))
    assert other not in live and other.lower() not in live and added not in live

    out = plugin(cli_env, "unsuppress", added, "-n", namespace)
    assert out.returncode == 1 and "is not suppressed" in out.stdout
    out = plugin(cli_env, "suppress", "not-an-address", "-n", namespace)
    assert out.returncode == 2 and "not a plain mailbox" in out.stderr


def test_the_plugin_tells_a_recipients_fate(
    ready_operator: Child,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    unique: str,
) -> None:
    rcpt, campaign = f"a-{unique}@x.test", f"{namespace}/spring"
    now = time.time()

    def event(disposition: Disposition, t: float, code: int, reply: str, attempt: int) -> bytes:
        return encode(
            Event(
                message_id=f"m-{unique}",
                campaign=campaign,
                recipient=rcpt,
                domain="x.test",
                disposition=disposition,
                time=t,
                attempt=attempt,
                egress_ip="127.0.0.2",
                smtp_code=code,
                enhanced_code=f"{code // 100}.0.0",
                reply=reply,
            )
        )

    _produce(
        kafka_bootstrap,
        f"{topic_prefix}.events",
        [
            (campaign.encode(), event(Disposition.DEFERRED, now - 60, 451, "greylisted", 0)),
            (campaign.encode(), event(Disposition.DELIVERED, now, 250, "queued as 4F2A", 1)),
        ],
    )
    out = plugin(cli_env, "fate", rcpt.upper(), "-n", namespace, "--pool", "news")
    assert out.returncode == 0, out.stderr
    assert "deferred" in out.stdout and "451 4.0.0 greylisted" in out.stdout
    assert f"{campaign}: delivered at" in out.stdout and "250 2.0.0 queued as 4F2A" in out.stdout
    assert "suppressed: no" in out.stdout

    # A campaign that does not exist is an error, not "no event" (issue 18, 8).
    out = plugin(cli_env, "fate", rcpt, "-n", namespace, "--campaign", "autumn", "--pool", "news")
    assert out.returncode == 2 and f'campaign "autumn" not found in namespace {namespace}' in (
        out.stderr
    )

    out = plugin(cli_env, "fate", rcpt, "-n", namespace, "-o", "json")
    [fate] = json.loads(out.stdout)["fates"]
    assert (fate["disposition"], fate["final"], len(fate["attempts"])) == ("delivered", True, 2)


def test_kubectl_scale_sp_scales_the_relays(
    ready_operator: Child, cli_env: dict[str, str], namespace: str
) -> None:
    out = kubectl(cli_env, "scale", "sp", "news", "--replicas=3", "-n", namespace)
    assert out.returncode == 0, out.stderr

    def deployment_replicas() -> int | None:
        dep = get(cli_env, "deployment", "mailpipe-relay-news", namespace)
        return None if dep is None else int(dep["spec"]["replicas"])

    wait_for(lambda: deployment_replicas() == 3, 30, "relay Deployment scaled to 3", ready_operator)
    # A controller-manager would now report 3 replicas; the dev stack has none, so say it.
    status = json.dumps({"status": {"replicas": 3}})
    out = kubectl(
        cli_env,
        "patch",
        "deployment",
        "mailpipe-relay-news",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    )
    assert out.returncode == 0, out.stderr
    scale_url = f"/apis/mailpipe.io/v1alpha1/namespaces/{namespace}/sendingpools/news/scale"

    def scale() -> dict[str, object]:
        got: dict[str, object] = json.loads(kubectl(cli_env, "get", "--raw", scale_url).stdout)
        return got

    wait_for(
        lambda: (
            scale().get("status", {})
            == {  # type: ignore[comparison-overlap]
                "replicas": 3,
                "selector": "app.kubernetes.io/component=relay,mailpipe.io/pool=news",
            }
        ),
        30,
        "the scale subresource to report 3 replicas and the relay pods' selector",
        ready_operator,
    )


def _pool_topics(bootstrap: str, prefix: str) -> list[str]:
    return owned_topics(prefix, list_topics(bootstrap))


def test_deleting_a_pool_deletes_its_topics_unless_retained(
    ready_operator: Child,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    # outbound, events, dlq, 2 delays (the broker's metadata may lag the creation a moment)
    wait_for(lambda: len(_pool_topics(kafka_bootstrap, topic_prefix)) == 5, 30, "pool topics")
    out = kubectl(cli_env, "delete", "sp", "news", "-n", namespace, f"--timeout={DELETE_SECONDS}s")
    assert out.returncode == 0, out.stderr + ready_operator.log_tail()
    wait_for(
        lambda: _pool_topics(kafka_bootstrap, topic_prefix) == [],
        DELETE_SECONDS,
        "the deleted pool's topics to be gone",
        ready_operator,
    )
    shared = _suppressions(namespace)
    assert shared in list_topics(kafka_bootstrap), "shared topics are never deleted"
    assert get(cli_env, "deployment", "mailpipe-relay-news", namespace) is None

    kept_prefix = f"{topic_prefix}-kept"
    manifest = pool_manifest("kept", namespace, kafka_bootstrap, kept_prefix).replace(
        "partitions:", "deletionPolicy: Retain\n    partitions:"
    )
    assert kubectl(cli_env, "apply", "-f", "-", stdin=manifest).returncode == 0
    wait_pool_ready(cli_env, namespace, ready_operator, "kept")
    wait_for(lambda: len(_pool_topics(kafka_bootstrap, kept_prefix)) == 5, 30, "pool topics")
    out = kubectl(cli_env, "delete", "sp", "kept", "-n", namespace, f"--timeout={DELETE_SECONDS}s")
    assert out.returncode == 0, out.stderr + ready_operator.log_tail()
    assert len(_pool_topics(kafka_bootstrap, kept_prefix)) == 5, "Retain keeps them"


CAMPAIGN = """
apiVersion: mailpipe.io/v1alpha1
kind: Campaign
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  poolRef: news
  suspend: true
  from: {{address: news@sender.test}}
  subject: Hello
  text: Hi
  audience: {{inline: [{{address: a@x.test}}]}}
"""


def _finalized(env: dict[str, str], kind: str, name: str, namespace: str) -> bool:
    obj = get(env, kind, name, namespace)
    return obj is not None and FINALIZER in obj["metadata"].get("finalizers", [])


def test_uninstall_leaves_nothing_stranded(
    operator_factory: Callable[..., Child],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    """What the chart's pre-delete hook runs (`kubectl mailpipe uninstall`), with
    the operator still there: every CR goes, with its relays and topics. Then
    the operator gone for good: the uninstall says which object is stuck and
    the documented escape hatch frees it."""
    op = operator_factory()
    manifest = pool_manifest("news", namespace, kafka_bootstrap, topic_prefix)
    assert kubectl(cli_env, "apply", "-f", "-", stdin=manifest).returncode == 0
    wait_pool_ready(cli_env, namespace, op)
    for name in ("spring", "autumn"):
        doc = CAMPAIGN.format(name=name, namespace=namespace)
        assert kubectl(cli_env, "apply", "-f", "-", stdin=doc).returncode == 0
        wait_for(lambda n=name: _finalized(cli_env, "camp", n, namespace), 30, "finalizer", op)  # type: ignore[misc]

    out = plugin(cli_env, "uninstall", "-n", namespace, "--timeout", "120")
    assert out.returncode == 0, out.stdout + out.stderr + op.log_tail()
    assert "every Campaign and SendingPool is gone" in out.stdout
    for kind in ("camp", "sp"):
        assert (
            json.loads(kubectl(cli_env, "get", kind, "-n", namespace, "-o", "json").stdout)["items"]
            == []
        )
    assert get(cli_env, "deployment", "mailpipe-relay-news", namespace) is None
    wait_for(lambda: _pool_topics(kafka_bootstrap, topic_prefix) == [], 30, "topics gone", op)

    # The operator gone for good, with a pool and a campaign it had finalized.
    assert kubectl(cli_env, "apply", "-f", "-", stdin=manifest).returncode == 0
    wait_pool_ready(cli_env, namespace, op)
    doc = CAMPAIGN.format(name="winter", namespace=namespace)
    assert kubectl(cli_env, "apply", "-f", "-", stdin=doc).returncode == 0
    wait_for(lambda: _finalized(cli_env, "camp", "winter", namespace), 30, "finalizer", op)
    op.stop()

    out = plugin(cli_env, "uninstall", "-n", namespace, "--timeout", "3")
    assert out.returncode == 1
    assert "campaigns/winter" in out.stdout
    escape = (
        f"kubectl patch campaigns winter -n {namespace} --type=merge "
        """-p '{"metadata":{"finalizers":null}}'"""
    )
    assert escape in out.stdout
    # The documented escape hatch, as a user types it.
    out = kubectl(
        cli_env,
        "patch",
        "campaigns",
        "winter",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":null}}',
    )
    assert out.returncode == 0, out.stderr
    assert get(cli_env, "camp", "winter", namespace) is None
    # ... or the plugin's release-finalizers, for every object already being deleted.
    assert kubectl(cli_env, "delete", "sp", "news", "-n", namespace, "--wait=false").returncode == 0
    assert _finalized(cli_env, "sp", "news", namespace), "stuck: no operator runs its finalizer"
    out = plugin(cli_env, "release-finalizers", "-n", namespace)
    assert out.returncode == 0 and "released sendingpools/news" in out.stdout, out.stdout
    assert get(cli_env, "sp", "news", namespace) is None


def _events(env: dict[str, str], namespace: str, reason: str) -> list[str]:
    listed = json.loads(
        kubectl(
            env, "get", "events", "-n", namespace, f"--field-selector=reason={reason}", "-o", "json"
        ).stdout
    )
    return [e["message"] for e in listed["items"]]


def test_deleting_never_waits_forever_on_a_kafka_that_is_gone(
    operator_factory: Callable[..., Child], cli_env: dict[str, str], namespace: str
) -> None:
    """A pool whose Kafka is unreachable, and its campaign: each deletion retries
    for the give-up time (5 minutes; 5 s here), then the object goes with a
    Warning Event instead of staying stuck on the finalizer."""
    # The give-up time and the retry paces are the operator's settings
    # (OperatorTimers): production's 5 minutes and 15 s, shortened here.
    op = operator_factory(
        MAILPIPE_DELETE_GIVE_UP_SECONDS="5",
        MAILPIPE_CANCEL_RETRY_SECONDS="1",
        MAILPIPE_KAFKA_RETRY_SECONDS="1",
    )
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    manifest = pool_manifest("news", namespace, dead, f"mailpipe.{namespace}.gone")
    assert kubectl(cli_env, "apply", "-f", "-", stdin=manifest).returncode == 0
    wait_for(lambda: _finalized(cli_env, "sp", "news", namespace), 30, "pool finalizer", op)
    # Suspended: its pause, still being retried against the dead Kafka, must
    # not keep the finalizer once the campaign is deleted.
    doc = CAMPAIGN.format(name="spring", namespace=namespace)
    assert "suspend: true" in doc
    assert kubectl(cli_env, "apply", "-f", "-", stdin=doc).returncode == 0
    wait_for(lambda: _finalized(cli_env, "camp", "spring", namespace), 30, "finalizer", op)

    for kind, name, reason in (
        ("camp", "spring", "CancelNotPublished"),
        ("sp", "news", "TopicsKept"),
    ):
        out = kubectl(
            cli_env, "delete", kind, name, "-n", namespace, f"--timeout={GIVE_UP_TEST_SECONDS}s"
        )
        assert out.returncode == 0, out.stderr + op.log_tail()
        assert get(cli_env, kind, name, namespace) is None
        wait_for(lambda r=reason: bool(_events(cli_env, namespace, r)), 10, f"{reason} Event", op)  # type: ignore[misc]
