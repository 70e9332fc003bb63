"""The plugin's answers say the truth about pools, campaigns and namespaces (issue 18, 8).

Before: `fate --campaign` read the pool named by `--pool` instead of the
campaign's (a wrong `--pool` printed "no event"); a campaign that does not
exist got "no event" and exit 0; a namespace with no pool, and one that does
not exist, both got "name the pool with --pool: ... has none". No operator is
needed: the plugin reads the objects from the API server and the events from Kafka.
"""

from __future__ import annotations

import time

import pytest
import yaml
from kafka import KafkaProducer

from mailpipe.contracts.topics import pool_prefix
from mailpipe.contracts.wire import Disposition, Event, encode
from mailpipe.devstack import harness
from mailpipe.kafkakit import ensure_topics
from tests.operator.integration.conftest import pool_manifest

from .conftest import one_line_error, plugin

pytestmark = pytest.mark.operator

CAMPAIGN = """
apiVersion: mailpipe.io/v1alpha1
kind: Campaign
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  poolRef: {pool}
  suspend: true
  from: {{address: news@sender.test}}
  subject: Hello
  text: Hi
  audience: {{inline: [{{address: a@x.test}}]}}
"""


def _pool(namespace: str, name: str, bootstrap: str) -> str:
    doc = yaml.safe_load(pool_manifest(name, namespace, bootstrap, "unused"))
    del doc["spec"]["kafka"]["topicPrefix"]  # the default: mailpipe.<namespace>.<name>
    return yaml.safe_dump(doc)


def _delivered(bootstrap: str, topic: str, campaign: str, rcpt: str) -> None:
    ensure_topics(bootstrap, [topic], partitions=1, replication=1)
    value = Event(
        message_id=f"m-{rcpt}",
        campaign=campaign,
        recipient=rcpt,
        domain="x.test",
        disposition=Disposition.DELIVERED,
        time=time.time(),
        smtp_code=250,
        reply="queued",
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topic, key=campaign.encode(), value=encode(value))
        producer.flush()
    finally:
        producer.close()


def test_namespaces_without_pools_are_named_for_what_they_are(
    crds: None, cli_env: dict[str, str], namespace: str, unique: str
) -> None:
    out = plugin(cli_env, "suppressions", "list", "-n", namespace)
    assert out.returncode == 2
    assert f"namespace {namespace} has no SendingPool" in one_line_error(out)

    missing = f"nosuch-{unique}"
    out = plugin(cli_env, "fate", "a@x.test", "-n", missing)
    assert out.returncode == 2
    assert f"namespace {missing} does not exist" in one_line_error(out)


def test_fate_reads_the_campaigns_own_pool_and_refuses_a_campaign_that_does_not_exist(
    crds: None, cli_env: dict[str, str], namespace: str, kafka_bootstrap: str, unique: str
) -> None:
    for name in ("news", "other"):
        harness.apply(cli_env, _pool(namespace, name, kafka_bootstrap))
    harness.apply(cli_env, CAMPAIGN.format(name="spring", namespace=namespace, pool="news"))
    rcpt = f"a-{unique}@x.test"
    events = f"{pool_prefix(namespace, 'news')}.events"
    _delivered(kafka_bootstrap, events, f"{namespace}/spring", rcpt)

    # Two pools: without --pool or --campaign the fate is read from both (issue 20, 7).
    out = plugin(cli_env, "fate", rcpt, "-n", namespace)
    assert out.returncode == 0, out.stderr
    assert f"{namespace}/spring: delivered at" in out.stdout, out.stdout

    # The wrong --pool: the campaign's own pool still answers, and the plugin says so.
    out = plugin(cli_env, "fate", rcpt, "--campaign", "spring", "--pool", "other", "-n", namespace)
    assert out.returncode == 0, out.stderr
    assert f"{namespace}/spring: delivered at" in out.stdout, out.stdout
    assert "campaign" in out.stderr and "sends through news" in out.stderr
    out = plugin(cli_env, "fate", rcpt, "--campaign", f"{namespace}/spring", "-n", "default")
    assert out.returncode == 0 and f"{namespace}/spring: delivered at" in out.stdout, out.stderr

    # A campaign that does not exist is an error, not "no event".
    out = plugin(cli_env, "fate", rcpt, "--campaign", "ghost", "--pool", "news", "-n", namespace)
    assert out.returncode == 2, out.stdout
    error = one_line_error(out)
    assert f'campaign "ghost" not found in namespace {namespace}' in error
    assert f"kubectl get campaigns -n {namespace}" in error
    assert out.stdout == ""

    # A pool that does not exist is named with the namespace's pools.
    out = plugin(cli_env, "fate", rcpt, "--pool", "nope", "-n", namespace)
    assert out.returncode == 2
    assert "it has news, other" in one_line_error(out)
