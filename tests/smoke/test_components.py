"""One test per real component, each proving the part is real, not a stand-in."""

from __future__ import annotations

import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import aiosmtplib
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from mailpipe.devstack.dns import Zone
from mailpipe.devstack.harness import helm, kubectl
from mailpipe.devstack.smtp_receiver import SMTPReceiver

pytestmark = pytest.mark.smoke


def _consume(consumer: KafkaConsumer, n: int, timeout_s: float = 30) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500, max_records=n - len(got)).values():
            got.extend(r.value for r in records)
    return got


def test_kafka_consumer_group_resumes_from_committed_offsets(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}.smoke"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(10):
        producer.send(topic, f"m{i}".encode())
    producer.flush()
    producer.close()

    group = f"{topic_prefix}-group"
    first = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=4,
    )
    got = _consume(first, 4)
    assert got == [b"m0", b"m1", b"m2", b"m3"]
    first.commit()
    assert first.committed(TopicPartition(topic, 0)) == 4
    first.close()

    second = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    rest = _consume(second, 6)
    second.close()
    assert rest == [f"m{i}".encode() for i in range(4, 10)]


CRD = textwrap.dedent(
    """\
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata:
      name: widgets.smoke.mailpipe.io
    spec:
      group: smoke.mailpipe.io
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget}
      versions:
        - name: v1
          served: true
          storage: true
          schema:
            openAPIV3Schema:
              type: object
              properties:
                spec:
                  type: object
                  required: [size]
                  properties:
                    size: {type: integer, minimum: 1, maximum: 10}
    """
)


def test_apiserver_enforces_crd_schema_and_issues_tokens(
    cli_env: dict[str, str], namespace: str
) -> None:
    applied = kubectl(cli_env, "apply", "-f", "-", stdin=CRD)
    assert applied.returncode == 0, applied.stderr
    est = kubectl(
        cli_env,
        "wait",
        "--for=condition=Established",
        "crd/widgets.smoke.mailpipe.io",
        "--timeout=30s",
    )
    assert est.returncode == 0, est.stderr

    good = "apiVersion: smoke.mailpipe.io/v1\nkind: Widget\nmetadata: {name: ok}\nspec: {size: 3}\n"
    bad = (
        "apiVersion: smoke.mailpipe.io/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 99}\n"
    )
    assert kubectl(cli_env, "apply", "-n", namespace, "-f", "-", stdin=good).returncode == 0
    refused = kubectl(cli_env, "apply", "-n", namespace, "-f", "-", stdin=bad)
    assert refused.returncode != 0
    assert "spec.size" in refused.stderr and "less than or equal to 10" in refused.stderr

    assert kubectl(cli_env, "create", "serviceaccount", "smoke", "-n", namespace).returncode == 0
    token = kubectl(cli_env, "create", "token", "smoke", "-n", namespace)
    assert token.returncode == 0, token.stderr
    assert token.stdout.count(".") == 2  # a signed JWT: header.payload.signature


def test_helm_installs_and_uninstalls_a_chart(
    cli_env: dict[str, str], namespace: str, tmp_path: Path
) -> None:
    chart = tmp_path / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: smoke\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smoke-{{ .Release.Name }}\n"
        "data:\n  hello: world\n"
    )
    version = helm(None, "version", "--short")
    assert version.stdout.startswith("v4."), version.stdout

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return helm(cli_env, *args, "-n", namespace)

    installed = run("install", "rel", str(chart), "--wait", "--timeout", "60s")
    assert installed.returncode == 0, installed.stderr
    assert kubectl(cli_env, "get", "configmap", "smoke-rel", "-n", namespace).returncode == 0
    removed = run("uninstall", "rel")
    assert removed.returncode == 0, removed.stderr
    gone = kubectl(cli_env, "get", "configmap", "smoke-rel", "-n", namespace)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_dnsmasq_answers_mx_in_preference_order(dns_zones: Callable[..., object]) -> None:
    import dns.resolver

    resolver = dns_zones(
        [
            Zone(
                "smoke.test",
                mx=(("mx2.smoke.test", 20), ("mx1.smoke.test", 10)),
                a={"mx1.smoke.test": "127.0.0.11", "mx2.smoke.test": "127.0.0.12"},
            ),
            Zone("nullmx.test", null_mx=True),
        ]
    )
    assert isinstance(resolver, dns.resolver.Resolver)
    answer = resolver.resolve("smoke.test", "MX")
    ordered = sorted((r.preference, str(r.exchange).rstrip(".")) for r in answer)
    assert ordered == [(10, "mx1.smoke.test"), (20, "mx2.smoke.test")]
    assert [r.address for r in resolver.resolve("mx1.smoke.test", "A")] == ["127.0.0.11"]
    null = list(resolver.resolve("nullmx.test", "MX"))
    assert [(r.preference, str(r.exchange)) for r in null] == [(0, ".")]


async def test_smtp_through_recording_receiver_with_bound_source(
    smtp_receiver: Callable[[str, int], SMTPReceiver],
) -> None:
    rx = smtp_receiver("127.0.0.1", 0)
    await aiosmtplib.send(
        b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: smoke\r\n\r\nhello\r\n",
        sender="a@src.test",
        recipients=["b@dst.test"],
        hostname=rx.host,
        port=rx.port,
        source_address=("127.0.0.2", 0),
        local_hostname="egress-2.src.test",
        start_tls=False,
    )
    [msg] = rx.messages()
    assert msg.peer == "127.0.0.2"
    assert msg.helo == "egress-2.src.test"
    assert msg.rcpt_tos == ("b@dst.test",)
    assert b"Subject: smoke" in msg.data
