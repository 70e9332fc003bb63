"""Relay integration harness: real Kafka, real relay processes, recording receivers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from mailpipe.contracts.config import RelayConfig
from mailpipe.relay.kafka_adapter import ensure_topics, read_topic

ROOT = Path(__file__).resolve().parents[3]
MAILPIPE = str(Path(sys.executable).parent / "mailpipe")


class Pool:
    """Topics and config of one test pool."""

    def __init__(self, bootstrap: str, prefix: str, tmp: Path, **overrides: Any) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.tmp = tmp
        data: dict[str, Any] = {
            "pool": f"test/{prefix}",
            "kafka": {
                "bootstrap_servers": bootstrap,
                "group_id": f"{prefix}-relays",
                "outbound_topic": f"{prefix}.outbound",
                "events_topic": f"{prefix}.events",
                "dlq_topic": f"{prefix}.dlq",
                "suppressions_topic": f"{prefix}.suppressions",
                "delay_topics": {"1s": f"{prefix}.delay.1s", "1m": f"{prefix}.delay.1m"},
            },
            "egress": [{"address": "127.0.0.2", "helo": "egress-2.sender.test"}],
            "retry": {"schedule_seconds": [1], "max_age_seconds": 3600},
            "tls": {"mode": "disabled"},
            "metrics_port": 0,
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        self.config = RelayConfig.model_validate(data)
        self.path = tmp / f"{prefix}.yaml"
        self.path.write_text(yaml.safe_dump(self.config.model_dump(mode="json")))
        ensure_topics(self.config.kafka, partitions=4)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")

    def send(self, *recipients: str, **extra: Any) -> str:
        record_id = extra.pop("id", None) or uuid.uuid4().hex
        value = {
            "v": 1,
            "id": record_id,
            "campaign": "test/camp",
            "sender": "news@sender.test",
            "recipients": [{"address": r} for r in recipients],
            "content": {"subject": "hello", "text": "x" * extra.pop("size", 100)},
            "created_at": time.time(),
            **extra,
        }
        domain = recipients[0].rpartition("@")[2]
        self.producer.send(
            self.config.kafka.outbound_topic, key=domain.encode(), value=json.dumps(value).encode()
        )
        return record_id

    def send_raw(self, key: bytes, value: bytes) -> None:
        self.producer.send(self.config.kafka.outbound_topic, key=key, value=value)

    def flush(self) -> None:
        self.producer.flush()

    def read(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        """Everything on `topic` so far."""
        return read_topic(self.bootstrap, topic)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in self.read(self.config.kafka.events_topic) if v]

    def close(self) -> None:
        self.producer.close()


class RelayProcess:
    def __init__(self, pool: Pool, name: str, env: dict[str, str] | None = None) -> None:
        self.log = pool.tmp / f"{name}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [MAILPIPE, "relay", "--config", str(pool.path), "--relay-id", name],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture
def pool_factory(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> Iterator[Callable[..., Pool]]:
    pools: list[Pool] = []

    def make(**overrides: Any) -> Pool:
        pool = Pool(kafka_bootstrap, f"{topic_prefix}{len(pools)}", tmp_path, **overrides)
        pools.append(pool)
        return pool

    yield make
    for p in pools:
        p.close()


@pytest.fixture
def relays() -> Iterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def start(pool: Pool, name: str = "relay-a", env: dict[str, str] | None = None) -> RelayProcess:
        r = RelayProcess(pool, name, env)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, relay: RelayProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if relay is not None and relay.proc.poll() is not None:
            raise AssertionError(f"relay exited while waiting for {what}:\n{relay.log_tail()}")
        time.sleep(0.2)
    tail = relay.log_tail() if relay is not None else ""
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{tail}")
