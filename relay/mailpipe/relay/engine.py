"""The relay engine: records in, SMTP transactions out, one disposition each.

    source.poll -> decode (bad -> DLQ) -> not due yet? (-> delay topic / hold)
      -> per-domain ready queue (full -> overflow to a delay topic)
      -> lanes: rate token, connection slot, egress IP (warm-up, back-off)
      -> transport.deliver -> classify each recipient
      -> events, suppressions, retry record (all acknowledged)
      -> offset finished -> commit up to the lowest unfinished offset

Each domain has its own queue and its own lanes (one lane = one connection's
worth of sequential work), so a throttled, backed-off or dead domain only ever
waits on itself (invariant 2). Nothing is committed before every record it
caused is acknowledged by Kafka (invariant 1). The engine depends only on the
protocols in `ports`; `main` wires in Kafka and SMTP, tests wire in fakes:

    Engine(config, source, sink, transport, suppressions=SuppressionList(),
           ledger=WarmupLedger(config, relay_id), clock=SystemClock(),
           metrics=RelayMetrics(), relay_id="relay-1")
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import re
from collections import deque
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .classify import Outcome, classify, reply
from .config import RelayConfig
from .message import MessageError, Signer, build_message
from .metrics import RelayMetrics
from .offsets import OffsetTracker
from .ports import (
    Clock,
    Envelope,
    RecordSink,
    RecordSource,
    SourceRecord,
    TopicPartition,
    Transport,
)
from .suppressions import CampaignStates, SuppressionList
from .throttle import Shaper, Shaping
from .warmup import WarmupLedger
from .wire import (
    DeliveryRecord,
    Disposition,
    Event,
    Suppression,
    SuppressionReason,
    WireError,
    decode_record,
    encode,
    suppression_key,
)

log = logging.getLogger("mailpipe.relay.engine")

COMMIT_INTERVAL_SECONDS = 0.2  # frequent enough that the read window, not commits, limits speed
POLL_IDLE_SECONDS = 0.05
HOLD_SLACK_SECONDS = 0.5  # records due this soon are sent now, not parked
STOP_GRACE_SECONDS = 20.0
# in-flight transactions get this long to finish on shutdown (above)
RELIEF_AFTER_SECONDS = 1.0  # a full window whose commits stood still this long is stuck
STUCK_WARN_SECONDS = 10.0
# A retry computed as `now + 600` reaches the step choice a moment later as 599.99 s:
# this much slack keeps it on the 10m step it was meant for (not the 1m one).
STEP_SLACK_SECONDS = 1.0
# How much of an undecodable value a DLQ copy keeps: enough to see what it was,
# and always far below Kafka's default 1 MB message limit, so the copy itself
# can never fail to produce (a 200 KB non-UTF-8 value escapes to 1.2 MB).
DLQ_COPY_BYTES = 64 * 1024
_STEP = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def step_seconds(step: str) -> int:
    """'1m' -> 60: delay topic step names as in DESIGN.md."""
    match = _STEP.match(step)
    if not match:
        raise ValueError(f"delay step {step!r} is not like 30s, 1m, 1h or 1d")
    return int(match.group(1)) * _UNIT[match.group(2)]


def task_stacks(tasks: set[asyncio.Task[Any]], limit: int = 3) -> list[str]:
    """Where a few tasks are suspended: their await chain, outermost first."""
    out = []
    for task in list(tasks)[:limit]:
        chain: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(chain) < 12:
            frame = getattr(awaited, "cr_frame", None)
            if frame is None:
                chain.append(type(awaited).__name__)
                break
            chain.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            awaited = getattr(awaited, "cr_await", None)
        out.append(" > ".join(chain))
    return out


def dlq_copy(src: SourceRecord, reason: str) -> bytes:
    """The DLQ value for `src`: the reason, where it came from, and the original
    value (UTF-8 text, or base64 when it is not UTF-8), cut to DLQ_COPY_BYTES so the
    copy always fits on the DLQ topic; its size and SHA-256 say what was cut."""
    raw = src.value or b""
    kept = raw[:DLQ_COPY_BYTES]
    value: dict[str, Any] = {
        "reason": reason[:2000],
        "topic": src.topic,
        "partition": src.partition,
        "offset": src.offset,
        "value_bytes": len(raw),
        "value_sha256": hashlib.sha256(raw).hexdigest(),
        "truncated": len(kept) < len(raw),
    }
    try:
        value["value"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        value["value_base64"] = base64.b64encode(kept).decode()
    return json.dumps(value).encode()


@dataclass
class Work:
    src: SourceRecord
    record: DeliveryRecord
    gen: int  # the offset tracker's ownership generation of src's partition
    message: bytes | None = None


@dataclass
class DomainQueue:
    items: deque[Work] = field(default_factory=deque)
    lanes: int = 0


class Engine:
    def __init__(
        self,
        config: RelayConfig,
        source: RecordSource,
        sink: RecordSink,
        transport: Transport,
        *,
        suppressions: SuppressionList,
        ledger: WarmupLedger,
        clock: Clock,
        metrics: RelayMetrics,
        relay_id: str,
        campaigns: CampaignStates | None = None,
    ) -> None:
        self.campaigns = campaigns or CampaignStates()
        self.source = source
        self.sink = sink
        self.transport = transport
        self.suppressions = suppressions
        self.ledger = ledger
        self.clock = clock
        self.metrics = metrics
        self.relay_id = relay_id
        self.tracker = OffsetTracker()
        self.shaping = Shaping()
        self._queues: dict[str, DomainQueue] = {}
        metrics.queue_depths.read = lambda: {d: len(q.items) for d, q in self._queues.items()}
        self._waiting_for_slot: dict[str, set[str]] = {}  # shaping key -> domains
        self._held: list[tuple[float, int, Work]] = []  # (due, seq, work) from delay topics
        self._held_per_tp: dict[TopicPartition, int] = {}
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiting_lanes: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._last_commit: dict[TopicPartition, int] = {}
        self._last_progress = 0.0
        self._last_stuck_warning = 0.0
        self.reconfigure(config)

    # -- configuration -------------------------------------------------------

    def reconfigure(self, config: RelayConfig) -> None:
        """Apply a new config without dropping work (shaping and warm-up update in place)."""
        self.config = config
        self.ledger.reconfigure(config)
        self.signer = Signer(config.dkim) if config.dkim else None
        steps = sorted((step_seconds(s), t) for s, t in config.kafka.delay_topics.items())
        self._delay_steps = steps
        self._step_of_topic = {t: step for step, t in steps}

    def _delay_topic(self, seconds: float) -> str:
        """The delay topic whose step is the largest one not beyond `seconds`."""
        if not self._delay_steps:
            return self.config.kafka.outbound_topic  # no delay topics: re-read, held in memory
        chosen = self._delay_steps[0][1]
        for step, topic in self._delay_steps:
            if step <= seconds + STEP_SLACK_SECONDS:
                chosen = topic
        return chosen

    # -- main loop -----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._stopping = False
        self._last_progress = self.clock.monotonic()
        committer = asyncio.create_task(self._commit_loop(stop))
        try:
            while not stop.is_set():
                self._release_held()
                # The window counts records read but not committed, so a crash
                # re-sends at most max_in_flight_records (invariant 1's bound).
                room = self.config.kafka.max_in_flight_records - self.tracker.uncommitted
                if room <= 0:
                    await self.source.poll(0)  # revocations still arrive at once
                    stuck = self.clock.monotonic() - self._last_progress
                    if stuck > RELIEF_AFTER_SECONDS:
                        self._relieve_window()
                    self._warn_if_stuck(stuck)
                    await asyncio.sleep(POLL_IDLE_SECONDS)
                    continue
                batch = await self.source.poll(room)
                for rec in batch:
                    self._accept(rec)
                self.metrics.in_flight.set(self.tracker.in_flight)
                if not batch:
                    await asyncio.sleep(0)
        finally:
            await self._drain()
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self._commit()

    async def _drain(self) -> None:
        """Stop taking new work; let running transactions finish, then leave."""
        self._stopping = True
        for q in self._queues.values():
            q.items.clear()  # unfinished: not committed, re-read by the next owner
        for task in list(self._waiting_lanes):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_SECONDS)
        for task in list(self._tasks):
            task.cancel()

    async def _commit_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(COMMIT_INTERVAL_SECONDS)
            await self._commit()

    async def _commit(self) -> None:
        offsets = self.tracker.committable()
        if offsets and offsets != self._last_commit:
            try:
                await self.source.commit(offsets)
            except Exception:  # a failed commit only means more re-reads later
                log.warning("commit failed", exc_info=True)
                return
            self._last_commit = offsets
            self._last_progress = self.clock.monotonic()
            self.tracker.committed(offsets)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("engine task failed", exc_info=task.exception())

    def _finish(self, src: SourceRecord, gen: int) -> None:
        self.tracker.finish(src.tp, src.offset, gen)

    # -- intake --------------------------------------------------------------

    def _accept(self, src: SourceRecord) -> None:
        gen = self.tracker.start(src.tp, src.offset)
        if src.value is None:
            self._finish(src, gen)  # a tombstone on a delivery topic carries nothing to send
            return
        try:
            record = decode_record(src.value)
        except WireError as exc:
            self._spawn(self._to_dlq(src, gen, str(exc)))
            return
        work = Work(src, record, gen)
        now = self.clock.time()
        if record.not_before is not None and record.not_before > now + HOLD_SLACK_SECONDS:
            step = self._step_of_topic.get(src.topic)
            if step is not None:
                # Read from a delay topic: wait at most one step past the record's
                # arrival there. Records behind it in this FIFO topic arrived later,
                # so none of them is due before this one is looked at again; a
                # record due later than that (next week, or put on too short a
                # step) is postponed again instead of pausing the partition for good.
                arrived = min(src.timestamp_ms / 1000, now) if src.timestamp_ms else now
                self._hold(work, min(record.not_before, arrived + step))
            elif not self._delay_steps:
                self._hold(work, record.not_before)
            else:
                self._spawn(self._postpone(work, record.not_before, reason=None))
            return
        self._enqueue(work)

    def _hold(self, work: Work, until: float) -> None:
        """Keep a not-yet-due record from a delay topic until `until` and pause its
        partition meanwhile: what is behind it arrived later (see `_accept`)."""
        heapq.heappush(self._held, (until, next(self._seq), work))
        tp = work.src.tp
        self._held_per_tp[tp] = self._held_per_tp.get(tp, 0) + 1
        self.source.pause([tp])

    def _release_held(self) -> None:
        now = self.clock.time()
        while self._held and self._held[0][0] <= now + HOLD_SLACK_SECONDS:
            _, _, work = heapq.heappop(self._held)
            tp = work.src.tp
            self._held_per_tp[tp] -= 1
            if self._held_per_tp[tp] == 0:
                del self._held_per_tp[tp]
                self.source.resume([tp])
            if not self.tracker.owns(tp):
                continue
            due = work.record.not_before
            if due is not None and due > now + HOLD_SLACK_SECONDS and self._delay_steps:
                self._spawn(self._postpone(work, due, reason="not_due"))
            else:
                self._enqueue(work)

    def _warn_if_stuck(self, stuck_s: float) -> None:
        """A window that stays full although relief ran means something holds
        offsets that will never finish: say what, every STUCK_WARN_SECONDS."""
        now = self.clock.monotonic()
        if stuck_s < STUCK_WARN_SECONDS or now - self._last_stuck_warning < STUCK_WARN_SECONDS:
            return
        self._last_stuck_warning = now
        log.warning(
            "read window full, no commit progress for %.0f s: %s; tasks wait in %s",
            stuck_s,
            self.describe(),
            task_stacks(self._tasks),
        )

    def describe(self) -> dict[str, Any]:
        """The engine's state, for `kill -USR1` and the stuck-window warning."""
        return {
            "in_flight": self.tracker.in_flight,
            "uncommitted": self.tracker.uncommitted,
            "queued": {d: len(q.items) for d, q in self._queues.items() if q.items},
            "lanes": {d: q.lanes for d, q in self._queues.items() if q.lanes},
            "held": len(self._held),
            "tasks": len(self._tasks),
            "stopping": self._stopping,
            "partitions": self.tracker.describe(),
        }

    def _relieve_window(self) -> None:
        """The read window is full and commits stand still: records queued behind a
        slow domain pin the commit position, so nothing new can be read and every
        other domain waits (head-of-line blocking). Move the largest queue, but
        what its lanes already hold, to a delay topic: their
        offsets finish, commits advance, reading resumes."""
        self._last_progress = self.clock.monotonic()  # one relief per stuck period
        mono = self.clock.monotonic()
        ips = [e.address for e in self.config.egress]

        def held_back(domain: str) -> bool:
            # Only a domain that waits on a limit of its own can pin the window;
            # a merely busy one drains by itself, and spilling it would cost a delay step.
            throttled = self.config.throttle_for(domain).messages_per_minute is not None
            return throttled or all(self.shaping.backed_off(ip, domain, mono) for ip in ips)

        candidates = [(d, q) for d, q in self._queues.items() if q.items and held_back(d)]
        if not candidates:
            return
        domain, q = max(candidates, key=lambda kv: len(kv[1].items))
        spilled = list(q.items)
        q.items.clear()  # lanes waiting for a token find nothing and end
        self.metrics.overflow.labels(domain).inc(len(spilled))
        delay = self._delay_steps[0][0] if self._delay_steps else 1.0
        due = self.clock.time() + delay
        log.info("window full: %d records of %s moved to the delay topic", len(spilled), domain)
        for work in spilled:
            self._spawn(self._postpone(work, due, reason="window"))

    def _enqueue(self, work: Work) -> None:
        domain = work.record.domain
        q = self._queues.get(domain)
        if q is None:
            q = self._queues[domain] = DomainQueue()
        if len(q.items) >= self.config.kafka.ready_queue_per_domain:
            # Invariant 2: a domain over its share spills to a delay topic
            # instead of holding up the partition it shares with others.
            self.metrics.overflow.labels(domain).inc()
            delay = self._delay_steps[0][0] if self._delay_steps else 1.0
            self._spawn(self._postpone(work, self.clock.time() + delay, reason="overflow"))
            return
        q.items.append(work)
        self._start_lanes(domain)

    # -- lanes ---------------------------------------------------------------

    def _shaper(self, domain: str) -> tuple[str, Shaper]:
        key = self.config.shaping_key(domain)
        return key, self.shaping.shaper(
            key, self.config.throttle_for(domain), self.clock.monotonic()
        )

    def _start_lanes(self, domain: str) -> None:
        if self._stopping:
            return
        q = self._queues[domain]
        key, shaper = self._shaper(domain)
        while q.items and q.lanes < len(q.items):
            if not shaper.can_open():
                self._waiting_for_slot.setdefault(key, set()).add(domain)
                return
            shaper.connections += 1
            q.lanes += 1
            self._spawn(self._lane(domain, key, shaper))

    async def _lane(self, domain: str, key: str, shaper: Shaper) -> None:
        q = self._queues[domain]
        try:
            while q.items and not self._stopping:
                # Wait for the rate token before taking a record, so records
                # stay in the queue (and can be spilled) while they wait.
                if shaper.bucket is not None:
                    wait = shaper.bucket.reserve(self.clock.monotonic())
                    if wait > 0:
                        self.metrics.throttle_wait.labels(domain).observe(wait)
                        # A lane waiting for its token holds no connection and may
                        # be cancelled on shutdown; its record stays unfinished.
                        task = asyncio.current_task()
                        assert task is not None
                        self._waiting_lanes.add(task)
                        try:
                            await self.clock.sleep(wait)
                        finally:
                            self._waiting_lanes.discard(task)
                        if self._stopping:
                            return
                if not q.items:
                    break  # spilled while we waited
                work = q.items.popleft()
                try:
                    await self._attempt(work, domain)
                except Exception as exc:
                    # The record's boundary: whatever went wrong, it gets a final
                    # disposition (failed events + a DLQ copy with the reason)
                    # instead of an offset that never finishes and stops commits.
                    log.exception("attempt failed", extra={"message_id": work.record.id})
                    await self._fail(work, exc)
        finally:
            q.lanes -= 1
            shaper.connections -= 1
            waiting = self._waiting_for_slot.pop(key, set())
            for other in waiting | {domain}:
                if other in self._queues:
                    self._start_lanes(other)

    # -- one attempt -----------------------------------------------------------

    async def _attempt(self, work: Work, domain: str) -> None:
        record = work.record
        now = self.clock.time()
        sends: list[Awaitable[None]] = []
        halted = self.campaigns.state(record.campaign)
        if halted == "paused":
            # Suspended campaign: hold the record in the longest delay step and look again then.
            await self._postpone(
                work, now + self._delay_steps[-1][0] if self._delay_steps else now + 60, None
            )
            return
        if halted == "cancelled":
            for rcpt in record.recipients:
                sends.append(
                    self._event(
                        record, rcpt.address, Disposition.FAILED, now, reason="campaign_cancelled"
                    )
                )
            await self._settle(work, sends)
            return
        live = []
        for rcpt in record.recipients:
            if self.suppressions.is_suppressed(rcpt.address):
                reason = self.suppressions.reason(rcpt.address)
                sends.append(
                    self._event(record, rcpt.address, Disposition.SUPPRESSED, now, reason=reason)
                )
            else:
                live.append(rcpt)
        if not live:
            await self._settle(work, sends)
            return

        mono = self.clock.monotonic()
        ips = [e.address for e in self.config.egress]
        excluded = frozenset(ip for ip in ips if self.shaping.backed_off(ip, domain, mono))
        ip = self.ledger.choose(domain, len(live), now, excluded)
        if ip is None:
            # No IP may send now: all backed off (wait for the first to rest) or
            # every warming budget spent and no warm IP (wait for tomorrow).
            end = self.shaping.earliest_backoff_end(domain, ips, mono)
            due = now + (end - mono) if end is not None else self.ledger.next_day_start(now)
            remaining = record.model_copy(update={"recipients": live})
            sends.append(self._produce_retry(remaining, due))
            await self._settle(work, sends)
            return

        if work.message is None:
            try:
                work.message = build_message(record, now, self.signer)
            except MessageError as exc:
                await self._to_dlq(work.src, work.gen, str(exc))
                return
        helo = next(e.helo for e in self.config.egress if e.address == ip)
        self.ledger.record(ip, domain, len(live), now)
        envelope = Envelope(
            domain, record.sender, tuple(r.address for r in live), work.message, ip, helo
        )
        result = await self.transport.deliver(envelope)

        now = self.clock.time()
        deferred = []
        next_delay = self.config.retry.delay_for(record.attempt + 1)
        expires = record.created_at + self.config.retry.max_age_seconds
        for rcpt in live:
            r = result.replies.get(rcpt.address) or reply(451, "4.3.0 no reply for recipient")
            verdict = classify(r)
            if verdict.backoff:
                self.shaping.back_off(ip, domain, verdict.reason, self.clock.monotonic())
                self.metrics.backoffs.labels(domain, ip, verdict.reason).inc()
            if verdict.outcome is Outcome.DELIVERED:
                disposition = Disposition.DELIVERED
            elif verdict.outcome is Outcome.BOUNCED:
                disposition = Disposition.BOUNCED
                if verdict.suppress:
                    self.suppressions.add(rcpt.address, SuppressionReason.HARD_BOUNCE.value)
                    sends.append(self._suppress(rcpt.address, r.text, now))
            elif now + next_delay > expires:
                disposition = Disposition.EXPIRED
            else:
                disposition = Disposition.DEFERRED
                deferred.append(rcpt)
            self.ledger.outcome(ip, disposition)
            self.metrics.delivered(disposition.value, domain, ip)
            sends.append(
                self._event(
                    record,
                    rcpt.address,
                    disposition,
                    now,
                    ip=ip,
                    mx=result.mx_host,
                    code=r.code,
                    enhanced=r.enhanced,
                    text=r.text,
                    reason=verdict.reason,
                )
            )
        if deferred:
            retry = record.model_copy(
                update={"recipients": deferred, "attempt": record.attempt + 1}
            )
            sends.append(self._produce_retry(retry, now + next_delay))
        await self._settle(work, sends)

    async def _settle(self, work: Work, sends: list[Awaitable[None]]) -> None:
        """Await every produce this record caused, then mark its offset finished."""
        if len(sends) == 1:
            await sends[0]  # the common case; gather() would cost a future more
        elif sends:
            await asyncio.gather(*sends)
        self._finish(work.src, work.gen)

    # -- producing -------------------------------------------------------------

    def _event(
        self,
        record: DeliveryRecord,
        recipient: str,
        disposition: Disposition,
        now: float,
        *,
        ip: str | None = None,
        mx: str | None = None,
        code: int | None = None,
        enhanced: str | None = None,
        text: str | None = None,
        reason: str | None = None,
    ) -> Awaitable[None]:
        event = Event(
            message_id=record.id,
            campaign=record.campaign,
            variant=record.variant,
            recipient=recipient,
            domain=record.domain,
            disposition=disposition,
            time=now,
            attempt=record.attempt + 1,
            egress_ip=ip,
            mx_host=mx,
            smtp_code=code,
            enhanced_code=enhanced,
            reply=text[:2000] if text else None,
            reason=reason,
            relay=self.relay_id,
        )
        key = (record.campaign or record.id).encode()
        return self.sink.send(self.config.kafka.events_topic, key, encode(event))

    def _suppress(self, address: str, detail: str, now: float) -> Awaitable[None]:
        value = Suppression(
            address=suppression_key(address),
            reason=SuppressionReason.HARD_BOUNCE,
            time=now,
            source=self.config.pool,
            detail=detail[:500],
        )
        return self.sink.send(
            self.config.kafka.suppressions_topic, suppression_key(address).encode(), encode(value)
        )

    def _produce_retry(self, record: DeliveryRecord, due: float) -> Awaitable[None]:
        record = record.model_copy(update={"not_before": due})
        topic = self._delay_topic(due - self.clock.time())
        return self.sink.send(topic, record.domain.encode(), encode(record))

    async def _postpone(self, work: Work, due: float, reason: str | None) -> None:
        """Move a record, unchanged but for not_before, to a delay topic."""
        await self._produce_retry(work.record, due)
        self._finish(work.src, work.gen)

    async def _fail(self, work: Work, exc: Exception) -> None:
        """A record the relay could not handle: one failed event per recipient (so
        campaign counts complete) and a DLQ copy naming the error."""
        reason = f"relay error: {type(exc).__name__}: {str(exc)[:300]}"
        now = self.clock.time()
        sends = [
            self._event(work.record, r.address, Disposition.FAILED, now, reason="relay_error")
            for r in work.record.recipients
        ]
        await asyncio.gather(*sends, return_exceptions=True)
        await self._to_dlq(work.src, work.gen, reason)

    async def _to_dlq(self, src: SourceRecord, gen: int, reason: str) -> None:
        self.metrics.dlq.labels(reason.split(":", 1)[0][:40]).inc()
        await self.sink.send(self.config.kafka.dlq_topic, src.key, dlq_copy(src, reason))
        self._finish(src, gen)

    # -- rebalancing -------------------------------------------------------------

    def on_revoked(self, tps: list[TopicPartition]) -> None:
        """Partitions moved to another replica: drop their queued work uncommitted
        (the new owner re-reads it) and let transactions already running finish."""
        gone = set(tps)
        dropped = 0
        for q in self._queues.values():
            kept = deque(w for w in q.items if w.src.tp not in gone)
            dropped += len(q.items) - len(kept)
            q.items = kept
        log.info(
            "revoked %s: %d queued records dropped for the new owner",
            sorted(f"{tp.topic}/{tp.partition}" for tp in gone),
            dropped,
        )
        self._held = [h for h in self._held if h[2].src.tp not in gone]
        heapq.heapify(self._held)
        for tp in gone:
            self._held_per_tp.pop(tp, None)
        self.tracker.revoke(list(gone))
