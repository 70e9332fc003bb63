"""The rate token is taken just before MAIL FROM, so what arrives keeps the rate.

Pure bucket arithmetic (`throttle.TokenBucket`), the record's token as the
transport takes it (`tokens.RecordToken`), and the scheduler's lanes driven
on a virtual clock with connections that take 20 s to greet: every sliding
60-s window of MAIL FROMs holds at most the per-minute limit, exactly.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

import pytest

from mailpipe.contracts.config import RelayConfig
from mailpipe.contracts.warmup import WarmupLedger
from mailpipe.contracts.wire import decode_record
from mailpipe.relay.classify import reply
from mailpipe.relay.fakes import ScriptedTransport
from mailpipe.relay.metrics import RelayMetrics
from mailpipe.relay.ports import Envelope, SourceRecord, Stage, TransactionResult
from mailpipe.relay.scheduling import Scheduler
from mailpipe.relay.tasks import Tasks
from mailpipe.relay.throttle import TokenBucket
from mailpipe.relay.tokens import RecordToken
from mailpipe.relay.work import Work

from .conftest import Harness, make_config, record_bytes


class VirtualClock:
    """Time that moves to the next sleeper's deadline once every task is idle, so
    concurrent lanes see one consistent timeline (ManualClock jumps per sleep)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), next(self._seq), fut))
        await fut

    async def run(self, until: float) -> None:
        """Advance, waking sleepers in deadline order, until nothing sleeps or `until`."""
        while True:
            for _ in range(50):  # let every runnable task reach its next sleep
                await asyncio.sleep(0)
            live = [s for s in self._sleepers if not s[2].cancelled()]
            if not live:
                return
            heapq.heapify(live)
            self._sleepers = live
            at, _, fut = heapq.heappop(self._sleepers)
            if at > until:
                return
            self.now = max(self.now, at)
            fut.set_result(None)


# -- the bucket: pure ---------------------------------------------------------


def test_a_token_given_back_frees_its_slot_only_if_none_was_taken_after() -> None:
    bucket = TokenBucket(60, now=0.0)
    assert bucket.take(0.0) == 0.0
    bucket.give_back(0.0)
    assert bucket.take(0.0) == 0.0  # the slot was free again
    assert bucket.take(1.0) == 0.0
    assert bucket.take(2.0) == 0.0
    bucket.give_back(1.0)  # too late: a token was taken after it, the slot stays spent
    assert bucket.take(2.5) == 0.5  # never more than the rate


def test_turns_pace_lanes_and_never_run_ahead_of_the_tokens_taken() -> None:
    bucket = TokenBucket(60, now=0.0)
    assert [bucket.turn(0.0) for _ in range(3)] == [0.0, 1.0, 2.0]
    assert bucket.take(0.0) == 0.0
    # A lane greeted late takes its token at 10 s: turns follow the tokens.
    assert bucket.take(10.0) == 0.0
    assert bucket.turn(3.0) == 11.0
    assert bucket.take(11.0) == 0.0


# -- the record's token ---------------------------------------------------------


async def test_the_token_is_taken_at_mail_from_and_later_transactions_ride_on_it() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(6, now=0.0)  # a token every 10 s
    waits: list[float] = []
    a, b = RecordToken(bucket, clock, waits.append), RecordToken(bucket, clock, waits.append)
    runner = asyncio.create_task(clock.run(until=100.0))
    await a.before_mail()
    await a.before_mail()  # the record's second transaction: no second token
    await b.before_mail()
    assert clock.now == 10.0
    assert waits == [0.0, 10.0]
    assert a.used and b.used
    await runner


async def test_a_mail_from_not_written_gives_its_token_back() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(6, now=0.0)
    token = RecordToken(bucket, clock)
    await token.before_mail()
    token.unused()  # the connection was found closed: nothing written
    assert not token.used
    assert bucket.take(0.0) == 0.0


async def test_a_retry_after_a_mail_from_that_may_have_arrived_takes_its_own_token() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(6, now=0.0)
    token = RecordToken(bucket, clock)
    runner = asyncio.create_task(clock.run(until=100.0))
    await token.before_mail()
    token.renew()  # a stale pooled connection: the MAIL FROM may have arrived
    await token.before_mail()
    assert clock.now == 10.0  # the retry waited for a token of its own
    assert token.used
    await runner


async def test_an_attempt_cut_while_waiting_for_its_token_takes_none() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(6, now=0.0)
    bucket.take(0.0)
    token = RecordToken(bucket, clock)
    waiting = asyncio.create_task(token.before_mail())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not token.used
    assert bucket.take(10.0) == 0.0  # it took nothing: the next token is free for another


# -- the scheduler's lanes, end to end on the virtual clock ----------------------------

PER_MINUTE = 10
GREETING_SECONDS = 20.0  # connect + greeting + EHLO + STARTTLS of a slow MX
TRANSACTION_SECONDS = 0.5
PER_CONNECTION = 4  # connections are reopened (and greeted late) all along


def _most_in_60s(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + 60.0) for start in times)


async def _run_lanes(*, token_before_connecting: bool) -> list[float]:
    """60 records to one domain with 5 connections; the MAIL FROM times."""
    clock = VirtualClock()
    config = make_config(
        throttles={
            "d.test": {
                "messages_per_minute": PER_MINUTE,
                "max_connections": 5,
                "messages_per_connection": PER_CONNECTION,
            }
        }
    )
    mails: list[float] = []
    idle: list[int] = []  # open connections, by messages carried

    async def attempt(work: Work) -> None:
        assert work.token is not None
        if token_before_connecting:
            await work.token.before_mail()  # the old order, for contrast
        sent = idle.pop() if idle else None
        if sent is None:
            await clock.sleep(GREETING_SECONDS)
            sent = 0
        await work.token.before_mail()  # what the SMTP session does before MAIL FROM
        mails.append(clock.monotonic())
        await clock.sleep(TRANSACTION_SECONDS)
        if sent + 1 < PER_CONNECTION:
            idle.append(sent + 1)

    async def fail(work: Work, exc: Exception) -> None:
        raise exc

    scheduler = Scheduler(clock, RelayMetrics(), WarmupLedger(config, "r"), Tasks(), attempt, fail)
    scheduler.reconfigure(config)
    for i in range(60):
        value = record_bytes(f"u{i}@d.test")
        src = SourceRecord("p.outbound", 0, i, b"k", value, 0)
        assert scheduler.enqueue(Work(src, decode_record(value), 0)) is None
    await clock.run(until=3600.0)
    assert len(mails) == 60
    return mails


async def test_no_60s_window_of_mail_froms_holds_more_than_the_limit() -> None:
    mails = await _run_lanes(token_before_connecting=False)
    assert _most_in_60s(mails) <= PER_MINUTE
    # and the limit is used: 60 messages in about 6 minutes, not more
    assert mails[-1] - mails[0] <= 59 * 60 / PER_MINUTE + GREETING_SECONDS


async def test_a_token_taken_before_connecting_would_bunch_arrivals() -> None:
    """The failure this order prevents, on the same model: tokens spent after a
    late greeting land in a window with the tokens of connections already open."""
    mails = await _run_lanes(token_before_connecting=True)
    assert _most_in_60s(mails) > PER_MINUTE


# -- the warm-up count follows the same rule -------------------------------------------

COLD = "127.0.0.2"


def _cold_ip_config() -> RelayConfig:
    return make_config(
        egress=[{"address": COLD, "helo": "cold.test", "warmup": True}],
        warmup={"schedule": [{"day": 1, "daily_limit": 5}]},
    )


def test_a_count_taken_back_leaves_neither_budget_nor_a_day_sent() -> None:
    ledger = WarmupLedger(_cold_ip_config(), "me")
    now = 1_700_006_400.0 + 600
    ledger.record(COLD, "d.test", 2, now)
    ledger.unrecord(COLD, "d.test", 2, now)
    assert ledger.remaining(COLD, None, now) == 5
    assert ledger.warmup_day(COLD, now + 86400) == 1  # yesterday was not a day it sent


async def test_an_attempt_that_wrote_no_mail_from_gives_its_warmup_count_back() -> None:
    h = Harness(_cold_ip_config())
    # A DNS failure: deferred, no back-off (a refused connection would also rest the IP)
    refused = reply(451, "4.4.3 DNS lookup failed: no answer")

    async def unreachable(envelope: Envelope) -> TransactionResult:
        rcpts = envelope.recipients  # no connection: no MAIL FROM, the token untouched
        return TransactionResult(
            dict.fromkeys(rcpts, refused), detail=dict.fromkeys(rcpts, Stage.DNS)
        )

    h.transport.deliver = unreachable  # type: ignore[method-assign]
    h.put(record_bytes("a@d.test"))
    h.put(record_bytes("b@d.test"))
    await h.run_until(lambda: len(h.events()) == 2)
    assert {e["disposition"] for e in h.events()} == {"deferred"}
    assert h.engine.ledger.remaining(COLD, None, h.clock.time()) == 5

    h.transport.deliver = ScriptedTransport().deliver  # type: ignore[method-assign]
    h.put(record_bytes("c@d.test"))
    await h.run_until(lambda: len(h.events()) == 3)
    assert h.engine.ledger.remaining(COLD, None, h.clock.time()) == 4  # a MAIL FROM counts
