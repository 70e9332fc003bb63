"""The soak's probes: counting receivers, RSS sampling, and what Kafka says at the end.

Split from `bench/soak.py` (the scenario) so each stays readable: these only
observe. Receivers count recipients and keep no message (200,000 messages
would weigh more than the relays being measured); the outcome follows the
events and DLQ topics without a consumer group; the lag is read with the
relays' group id but never joins it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from mailpipe.contracts.config import RelayConfig
from mailpipe.devstack import harness
from mailpipe.devstack.procs import free_port
from mailpipe.devstack.smtp_receiver import ehlo_responses

from .common import rss_mb
from .soak_model import BOUNCE_REPLY, GREYLIST_REPLY, Tally

OK = "250 2.0.0 OK"
RSS_SAMPLE_SECONDS = 1.0
EVENT_POLL_MS = 1000
RECEIVER_START_SECONDS = 10.0  # aiosmtpd's thread binds within milliseconds; a loaded machine


class CountingHandler:
    """aiosmtpd handler that counts accepted recipients and keeps no message
    (200,000 messages would weigh more than the relays being measured).
    `bounce*` local parts are refused 550, `grey*` greylisted once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}  # domain -> when each message arrived
        self._greylisted: set[str] = set()

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        return ehlo_responses(session, hostname, responses)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        local = address.partition("@")[0]
        if local.startswith("bounce"):
            return BOUNCE_REPLY
        if local.startswith("grey"):
            with self.lock:
                first = address not in self._greylisted
                self._greylisted.add(address)
            if first:
                return GREYLIST_REPLY
        envelope.rcpt_tos.append(address)
        return OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        now = time.time()
        with self.lock:
            self.received.update(a.lower() for a in envelope.rcpt_tos)
            for a in envelope.rcpt_tos:
                self.times.setdefault(a.rpartition("@")[2].lower(), []).append(now)
        return OK


@contextmanager
def receivers(hosts: list[str]) -> Iterator[tuple[int, list[CountingHandler]]]:
    """One counting receiver per host, all on one port (the pool's smtp_port)."""
    port = common_free_port(hosts)
    handlers = [CountingHandler() for _ in hosts]
    controllers = [
        Controller(
            h, hostname=host, port=port, ready_timeout=RECEIVER_START_SECONDS, ident="mailpipe-soak"
        )
        for h, host in zip(handlers, hosts, strict=True)
    ]
    started: list[Controller] = []
    try:
        for c in controllers:
            c.start()
            started.append(c)
        yield port, handlers
    finally:
        for c in started:
            c.stop()


def common_free_port(hosts: list[str]) -> int:
    """A port free on every host: the relay dials every MX on the pool's one smtp_port."""
    while True:
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue


class RSSSampler:
    """Each relay's RSS every second, as (seconds since start, MiB)."""

    def __init__(self, children: list[harness.Child]) -> None:
        self.curves: dict[str, list[tuple[float, float]]] = {c.name: [] for c in children}
        self._children = children
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            t = round(time.monotonic() - self._start, 1)
            for c in self._children:
                self.curves[c.name].append((t, round(rss_mb(c.pid), 1)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def group_members(bootstrap: str, group: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_groups([group])[group]
    except KafkaError:  # the coordinator is still being elected
        return 0
    finally:
        admin.close()
    return len(described.get("members", [])) if described.get("group_state") == "Stable" else 0


class Outcome:
    """Follows the events and DLQ topics from the beginning (no consumer group)."""

    def __init__(self, config: RelayConfig) -> None:
        self.tally = Tally()
        self.delivered_to: Counter[str] = Counter()
        self.consumer = KafkaConsumer(
            bootstrap_servers=config.kafka.bootstrap_servers, enable_auto_commit=False
        )
        self.dlq_topic = config.kafka.dlq_topic
        tps = [
            TopicPartition(t, p)
            for t in (config.kafka.events_topic, self.dlq_topic)
            for p in self.consumer.partitions_for_topic(t) or ()
        ]
        self.tps = tps
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)

    def poll(self) -> None:
        for tp, batch in self.consumer.poll(timeout_ms=EVENT_POLL_MS).items():
            for r in batch:
                value: dict[str, Any] = json.loads(r.value or b"{}")
                if tp.topic == self.dlq_topic:
                    self.tally.add_dlq(value)
                    continue
                self.tally.add_event(value)
                if value.get("disposition") == "delivered":
                    self.delivered_to[str(value.get("recipient")).lower()] += 1

    def drain(self) -> None:
        """Read to the end as it is now: whatever the relays wrote, a late duplicate too."""
        ends = self.consumer.end_offsets(self.tps)
        while any(self.consumer.position(tp) < end for tp, end in ends.items()):
            self.poll()

    def close(self) -> None:
        self.consumer.close()


def read_lag(config: RelayConfig) -> tuple[dict[str, int], list[str]]:
    """Per partition of every topic the group consumes: end - committed; and the
    partitions that hold records but have no committed offset at all."""
    k = config.kafka
    group = KafkaConsumer(
        bootstrap_servers=k.bootstrap_servers, group_id=k.group_id, enable_auto_commit=False
    )
    try:
        tps = [
            TopicPartition(t, p)
            for t in [k.outbound_topic, *k.delay_topics.values()]
            for p in group.partitions_for_topic(t) or ()
        ]
        ends = group.end_offsets(tps)
        lag, uncommitted = {}, []
        for tp in tps:
            committed = group.committed(tp)
            if committed is None and ends[tp] > 0:
                uncommitted.append(f"{tp.topic}/{tp.partition}")
            lag[f"{tp.topic}/{tp.partition}"] = ends[tp] - (committed or 0)
        return lag, uncommitted
    finally:
        group.close(autocommit=False)
