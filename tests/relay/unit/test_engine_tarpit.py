"""The tarpit budget in the engine: a stalling domain is cut, the others go on.

The engine-level twin of `tests/relay/integration/test_tarpit.py` (fakes, a
transport that never answers for one domain): fast to run, and it checks the
parts the integration test cannot see: the cut record's offset finishes only
once its retry is produced, and a budget never cuts a young attempt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mailpipe.contracts.wire import decode_record
from mailpipe.relay import engine as engine_module
from mailpipe.relay.clock import ManualClock, SystemClock
from mailpipe.relay.fakes import ScriptedTransport
from mailpipe.relay.ports import Envelope, TransactionResult
from mailpipe.relay.stalls import Stalls

from .conftest import Harness, make_config, record_bytes

pytestmark = pytest.mark.faults

BUDGET_SECONDS = 0.5
WINDOW = 20
STOP_GRACE_SECONDS = 0.5  # attempts still stalled at the end are cancelled this soon


@pytest.fixture(autouse=True)
def short_stop(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(engine_module, "STOP_GRACE_SECONDS", STOP_GRACE_SECONDS)
    yield


def _put_all(h: Harness) -> None:
    now = time.time()  # young records: deferred, not expired
    for i in range(30):  # more than the window, all ahead of the healthy records
        h.put(record_bytes(f"t{i}@tarpit.test", created_at=now))
    for i in range(10):
        h.put(record_bytes(f"h{i}@healthy.test", created_at=now))


class TarpitTransport(ScriptedTransport):
    """Never answers for tarpit.test (until cancelled); answers the others at once."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = 0
        self.cancelled = 0

    async def deliver(self, envelope: Envelope) -> TransactionResult:
        if envelope.domain != "tarpit.test":
            return await super().deliver(envelope)
        self.stalled += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")


def _config(budget: float) -> Any:
    base = make_config().kafka.model_dump()
    return make_config(
        kafka={**base, "delay_topics": {"1m": "p.delay.1m"}, "max_in_flight_records": WINDOW},
        delivery={"stall_budget_seconds": budget},
    )


async def test_a_stalling_domain_is_cut_and_the_healthy_one_delivered() -> None:
    h = Harness(_config(BUDGET_SECONDS), clock=SystemClock())
    h.engine.dispatch.transport = h.transport = transport = TarpitTransport()
    _put_all(h)
    await h.run_until(
        lambda: sum(e["domain"] == "healthy.test" for e in h.events()) == 10, timeout_s=8
    )
    assert transport.cancelled >= 1  # stalled attempts were cut, not waited for
    tarpit_events = [e for e in h.events() if e["domain"] == "tarpit.test"]
    assert tarpit_events and {e["disposition"] for e in tarpit_events} == {"deferred"}
    assert all("over the domain's time budget" in e["reply"] for e in tarpit_events)
    on_delay = [decode_record(v or b"") for _, v in h.sink.topics["p.delay.1m"]]
    retried = {r.id for r in on_delay if r.attempt == 1}
    # Every cut attempt's record went the retry way (ARCHITECTURE.md, "Nothing lost": its offset
    # finished after its retry was produced); the queued ones were postponed.
    assert {e["message_id"] for e in tarpit_events} == retried
    assert len(on_delay) > len(retried)
    assert all(r.domain == "tarpit.test" for r in on_delay)


async def test_without_the_budget_the_tarpit_holds_the_window() -> None:
    """The same run with a budget nothing reaches: the healthy records wait (the
    finding as it was), which is what the test above must not see."""
    h = Harness(_config(3600), clock=SystemClock())
    h.engine.dispatch.transport = h.transport = TarpitTransport()
    _put_all(h)
    with pytest.raises(TimeoutError):
        await h.run_until(lambda: any(e["domain"] == "healthy.test" for e in h.events()), 3)


async def test_only_attempts_older_than_the_budget_are_cut() -> None:
    clock = ManualClock()
    stalls = Stalls(clock)
    started = asyncio.Event()

    async def attempt(domain: str) -> str:
        with stalls.watch(domain) as watch:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return "cut" if watch.cut and watch.uncut() else "cancelled"
        return "done"

    old = asyncio.create_task(attempt("slow.test"))
    await started.wait()
    clock.advance(BUDGET_SECONDS * 2)
    started.clear()
    young = asyncio.create_task(attempt("young.test"))
    await started.wait()
    assert stalls.cut(BUDGET_SECONDS) == ["slow.test"]
    assert await old == "cut"
    assert stalls.cut_recently("slow.test") and not stalls.cut_recently("young.test")
    clock.advance(BUDGET_SECONDS * 2)
    assert not stalls.cut_recently("slow.test")  # one budget later it may try again
    young.cancel()  # a shutdown's cancel is never mistaken for a cut
    assert await young == "cancelled"
