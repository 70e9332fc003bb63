"""Warm-up status at bounded cost, and the IP un-pause (issue 12, points 8 and 5).

Against the real kube-apiserver and Kafka, with the operator as a process.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from mailpipe.contracts.config import parse_config
from mailpipe.contracts.warmup import UNPAUSE_ANNOTATION, WarmupLedger
from mailpipe.contracts.wire import Disposition, Event, encode
from mailpipe.devstack.harness import Child, kubectl_ok
from mailpipe.kafkakit import TopicFollower
from mailpipe.relay.kafka.follower import apply_event

from .conftest import get, kubectl, pool_manifest, wait_for, wait_pool_ready

pytestmark = pytest.mark.operator

POOLS = 20
# One events reader, at most two admin clients and one producer, each with a
# bootstrap connection and one to the (single) broker: a constant, not a
# number that grows with the pools (one follower per pool held 20-40).
MAX_KAFKA_CONNECTIONS = 8
STATUS_SECONDS = 90  # ready, then the warm-up timer (15 s) has reported the events
IP = "127.0.0.2"
MIN_SAMPLE = 4


def kafka_connections(pid: int, bootstrap: str) -> int:
    """Established TCP connections of process `pid` to the broker's port, from /proc."""
    port = int(bootstrap.rsplit(":", 1)[1])
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def event(i: int, disposition: Disposition, relay: str = "relay-x") -> bytes:
    return encode(
        Event(
            message_id=f"m{i}",
            recipient=f"u{i}@x.test",
            domain="x.test",
            disposition=disposition,
            time=time.time(),
            egress_ip=IP,
            relay=relay,
        )
    )


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for v in values:
            producer.send(topic, v)
        producer.flush()
    finally:
        producer.close()


def test_status_of_many_pools_costs_a_bounded_number_of_kafka_connections(
    operator_factory: Callable[..., Child],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = operator_factory()
    names = [f"p{i:02d}" for i in range(POOLS)]
    docs = [
        yaml.safe_load(pool_manifest(n, namespace, kafka_bootstrap, f"{topic_prefix}{n}"))
        for n in names
    ]
    for d in docs:
        d["spec"]["kafka"]["partitions"] = 1
    kubectl_ok(cli_env, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    for n in names:
        wait_pool_ready(cli_env, namespace, op, n)
    # One delivered event per pool: every pool's status must show it, so every
    # events topic is really read.
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        for i, n in enumerate(names):
            producer.send(f"{topic_prefix}{n}.events", event(i, Disposition.DELIVERED))
        producer.flush()
    finally:
        producer.close()

    def all_counted() -> bool:
        for n in names:
            ips = (get(cli_env, "sp", n, namespace) or {}).get("status", {}).get("ips") or []
            if not ips or ips[0].get("sentToday") != 1:
                return False
        return True

    wait_for(all_counted, STATUS_SECONDS, f"{POOLS} pools to count their events", op)
    connections = kafka_connections(op.pid, kafka_bootstrap)
    assert 0 < connections <= MAX_KAFKA_CONNECTIONS, connections
    # kafka-python's "blocking the event loop" warnings depend on CPU load: the
    # benchmark counts them (bench/operator.py), a test would only flake.


def warming_pool(namespace: str, bootstrap: str, prefix: str) -> str:
    return pool_manifest(
        "news",
        namespace,
        bootstrap,
        prefix,
        egressIPs=[
            {"address": IP, "helo": "cold.sender.test", "warmup": True},
            {"address": "127.0.0.3", "helo": "warm.sender.test"},
        ],
        warmup={
            "minSample": MIN_SAMPLE,
            "bounceRatePause": 0.05,
            "schedule": [{"day": 1, "dailyLimit": 1000}],
        },
    )


def relay_view(env: dict[str, str], namespace: str, bootstrap: str, topic: str) -> dict[str, str]:
    """The paused IPs as a relay starting now derives them: its config from the
    ConfigMap the operator wrote, the events replayed by the relay's own code."""
    cm = get(env, "configmap", "mailpipe-relay-news", namespace)
    assert cm is not None
    ledger = WarmupLedger(parse_config(cm["data"]["relay.yaml"]), "relay-fresh")
    bad: list[None] = []

    async def replay() -> None:
        follower = TopicFollower(
            bootstrap, topic, apply_event(ledger, "relay-fresh", lambda: bad.append(None))
        )
        follower.start()
        try:
            await follower.wait_caught_up(30)
        finally:
            await asyncio.to_thread(follower.stop)

    asyncio.run(replay())
    assert not bad
    return ledger.paused()


def paused_condition(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c.get("type") == "WarmupPaused":
            return dict(c)
    return None


def test_bounces_pause_an_ip_and_the_annotation_unpauses_it_for_relays_and_operator(
    operator_factory: Callable[..., Child],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = operator_factory()
    kubectl_ok(
        cli_env, "apply", "-f", "-", stdin=warming_pool(namespace, kafka_bootstrap, topic_prefix)
    )
    wait_pool_ready(cli_env, namespace, op)
    events = f"{topic_prefix}.events"
    produce(kafka_bootstrap, events, [event(i, Disposition.BOUNCED) for i in range(MIN_SAMPLE)])

    def pool() -> dict[str, Any] | None:
        return get(cli_env, "sp", "news", namespace)

    def paused() -> bool:
        c = paused_condition(pool())
        return c is not None and c["status"] == "True"

    wait_for(paused, STATUS_SECONDS, "WarmupPaused=True", op)
    cond = paused_condition(pool())
    assert cond is not None and cond["message"].startswith(f"{IP} paused: bounce rate 100.0%")
    assert " at 20" in cond["message"]  # when it paused
    assert "PAUSED" in (pool() or {})["status"]["warmupSummary"]  # the WARMUP column
    listed = kubectl(cli_env, "get", "sp", "news", "-n", namespace)
    assert f"{IP} PAUSED" in listed.stdout
    warnings = kubectl_ok(
        cli_env,
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "reason=IPPaused",
        "-o",
        "json",
    )
    assert IP in warnings and '"Warning"' in warnings
    assert IP in relay_view(cli_env, namespace, kafka_bootstrap, events)

    kubectl_ok(cli_env, "annotate", "sp", "news", "-n", namespace, f"{UNPAUSE_ANNOTATION}={IP}")

    def unpaused() -> bool:
        obj = pool()
        c = paused_condition(obj)
        annotations = (obj or {}).get("metadata", {}).get("annotations", {})
        # False, or gone: the pool's reconcile may rewrite the conditions it owns
        not_paused = c is None or c["status"] == "False"
        return not_paused and UNPAUSE_ANNOTATION not in annotations

    wait_for(unpaused, STATUS_SECONDS, "WarmupPaused no longer True, annotation removed", op)
    assert "PAUSED" not in (pool() or {})["status"]["warmupSummary"]
    assert relay_view(cli_env, namespace, kafka_bootstrap, events) == {}

    # A restarted operator re-derives the same from the topic; new bounces pause again.
    op.stop()
    op = operator_factory()
    produce(
        kafka_bootstrap,
        events,
        [event(100 + i, Disposition.BOUNCED) for i in range(MIN_SAMPLE)],
    )
    wait_for(paused, STATUS_SECONDS, "WarmupPaused=True again after new bounces", op)
    assert IP in relay_view(cli_env, namespace, kafka_bootstrap, events)
