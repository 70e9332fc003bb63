from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from mailpipe.contracts.config import RelayConfig
from mailpipe.contracts.suppressions import SuppressionList
from mailpipe.contracts.warmup import WarmupLedger
from mailpipe.relay.clock import ManualClock, SystemClock
from mailpipe.relay.engine import Engine
from mailpipe.relay.fakes import MemorySink, MemorySource, ScriptedTransport
from mailpipe.relay.metrics import RelayMetrics
from mailpipe.relay.ports import Clock, SiteLookup

_ids = itertools.count()

# The relay runs on uvloop (relay/main.py) and these modules' SMTP transport
# tests run on both loops: uvloop's transports do not derive from
# asyncio.Transport and its STARTTLS is its own code (a type check on the
# transport once deferred every delivery on uvloop).
BOTH_LOOPS_MODULES = frozenset({"test_smtp_session", "test_tls_modes"})


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Both loops for BOTH_LOOPS_MODULES, asyncio's for the rest (a mapping of
    one is not named in the test ids)."""
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    module = getattr(item, "module", None)
    if module is not None and module.__name__.rpartition(".")[2] in BOTH_LOOPS_MODULES:
        loops["uvloop"] = uvloop.new_event_loop
    return loops


def make_config(**overrides: Any) -> RelayConfig:
    data: dict[str, Any] = {
        "pool": "ns/pool",
        "kafka": {
            "bootstrap_servers": "unused:9092",
            "group_id": "g",
            "outbound_topic": "p.outbound",
            "events_topic": "p.events",
            "dlq_topic": "p.dlq",
            "delay_topics": {"1m": "p.delay.1m", "10m": "p.delay.10m"},
        },
        "egress": [{"address": "127.0.0.2", "helo": "e2.test"}],
        "metrics_port": 0,
    }
    data.update(overrides)
    return RelayConfig.model_validate(data)


def record_bytes(*recipients: str, subject: str = "hi", **extra: Any) -> bytes:
    rec = {
        "v": 1,
        "id": f"m{next(_ids)}",
        "campaign": "ns/camp",
        "sender": "news@sender.test",
        "recipients": [{"address": r} for r in recipients],
        "content": {"subject": subject, "text": "hello"},
        "created_at": 1_700_000_000.0,
    }
    rec.update(extra)
    return json.dumps(rec).encode()


class Harness:
    def __init__(
        self, config: RelayConfig, clock: Clock | None = None, sites: SiteLookup | None = None
    ) -> None:
        self.config = config
        self.source = MemorySource()
        self.sink = MemorySink()
        self.transport = ScriptedTransport()
        self.suppressions = SuppressionList()
        self.clock = clock or ManualClock()
        self.engine = Engine(
            config,
            self.source,
            self.sink,
            self.transport,
            suppressions=self.suppressions,
            ledger=WarmupLedger(config, "relay-test"),
            clock=self.clock,
            metrics=RelayMetrics(),
            relay_id="relay-test",
            sites=sites,
        )

    def put(self, value: bytes, partition: int = 0, topic: str = "p.outbound") -> None:
        """`value` keyed by its site, as the fan-out keys it (bytes that are no
        record keep a placeholder key: they never get as far as a site)."""
        self.source.append(topic, partition, self.site_key(value), value)

    def site_key(self, value: bytes) -> bytes:
        try:
            domain = json.loads(value)["recipients"][0]["address"].rpartition("@")[2]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return b"k"
        return self.config.site_of(domain).encode()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(v or b"{}") for _, v in self.sink.topics["p.events"]]

    async def run_until(self, done: Callable[[], bool], timeout_s: float = 5.0) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(self.engine.run(stop))
        try:
            async with asyncio.timeout(timeout_s):
                while not done():  # noqa: ASYNC110 — polling a plain predicate
                    await asyncio.sleep(0.005)
        finally:
            stop.set()
            await task


@pytest.fixture
def harness() -> Harness:
    return Harness(make_config())


@pytest.fixture
def real_clock() -> SystemClock:
    return SystemClock()
