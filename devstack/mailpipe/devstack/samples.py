"""Delivery records and relay configs for the tests and benchmarks, built from the models.

Tests and benchmarks used to write these as raw dicts, which drift silently
from the contract (a renamed field becomes an unknown key only the relay
notices). Building them from the contract models (ARCHITECTURE.md,
components: `mailpipe.contracts`) fails at the call site instead, and the
relay reads exactly what `encode` and `dump_config` write in production.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from pydantic import BaseModel

from mailpipe.contracts.config import (
    DeliveryPolicy,
    EgressIP,
    KafkaSettings,
    RelayConfig,
    RelayTLSSettings,
    TLSMode,
    dump_config,
)
from mailpipe.contracts.topics import TOPIC_ROOT, Topics
from mailpipe.contracts.wire import Content, DeliveryRecord, Recipient, encode

SENDER = "news@sender.test"
SUBJECT = "hello"
BODY_BYTES = 100  # a short text body: the tests are about delivery, not MIME size


def delivery_record(
    *recipients: str,
    id: str | None = None,
    sender: str = SENDER,
    subject: str = SUBJECT,
    text: str | None = None,
    size: int = BODY_BYTES,
    campaign: str | None = None,
    **fields: Any,
) -> DeliveryRecord:
    """One record to `recipients` (one domain), a text body of `size` bytes by default.

    `fields` are further DeliveryRecord fields (not_before, attempt, ...)."""
    return DeliveryRecord(
        id=id or uuid.uuid4().hex,
        campaign=campaign,
        sender=sender,
        recipients=[Recipient(address=r) for r in recipients],
        content=Content(subject=subject, text="x" * size if text is None else text),
        created_at=time.time(),
        **fields,
    )


def send_record(
    producer: KafkaProducer,
    topic: str,
    record: DeliveryRecord,
    partition: int | None = None,
    key: str | None = None,
) -> None:
    """Produce `record` keyed by `key`, else by its domain (as a producer that knows
    no sites does: the relays forward a grouped domain's record to its site,
    `contracts.sites`; the operator's fan-out keys by site)."""
    key = record.domain if key is None else key
    producer.send(topic, key=key.encode(), value=encode(record), partition=partition)


def pool_topics(
    bootstrap: str,
    prefix: str,
    delay_steps: Sequence[str],
    *,
    routed: bool = False,
    **settings: Any,
) -> KafkaSettings:
    """Kafka settings of a pool whose topics all start with `prefix`, named as the
    operator names them (`Topics`). `prefix` is a pool prefix,
    `mailpipe.<namespace>.<pool>` (`topics.pool_prefix`); the namespace's
    suppression and control topics are its parent's, so parallel tests (each
    its own namespace) never see each other's suppressions. `routed`: named
    as for a pool with static routes (its suppressions stay its own)."""
    space, dot, _ = prefix.rpartition(".")
    if not dot or not space.startswith(f"{TOPIC_ROOT}."):
        raise ValueError(f"{prefix!r} is not a pool prefix (topics.pool_prefix)")
    topics = Topics.for_prefix(prefix, delay_steps, space=space, routed=routed)
    return KafkaSettings.for_topics(
        topics, bootstrap_servers=bootstrap, group_id=f"{prefix}.relays", **settings
    )


def relay_config(
    pool: str, kafka: KafkaSettings, egress: Sequence[EgressIP], /, **overrides: Any
) -> RelayConfig:
    """A relay config for loopback tests: no TLS, no metrics server, loopback MX
    hosts allowed (the destination policy's explicit opt-in: every receiver of
    the tests, the demo and the benchmarks listens on 127.0.0.0/8), then `overrides`.

    An override that is a mapping is merged into the field it names (so
    `kafka={"max_in_flight_records": 150}` keeps the topics); anything else
    replaces the field. The result is validated like a config file. The
    parameters are positional-only so `kafka=` and `egress=` can be overrides."""
    base = RelayConfig(
        pool=pool,
        kafka=kafka,
        egress=list(egress),
        tls=RelayTLSSettings(mode=TLSMode.DISABLED),
        delivery=DeliveryPolicy(allow_private_destinations=True),
        metrics_port=0,
    )
    data = base.model_dump()
    for key, value in overrides.items():
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return RelayConfig.model_validate(data)


def write_config(config: RelayConfig, path: Path) -> Path:
    """Write `config` as the operator writes it to the relay's ConfigMap."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(config))
    return path
