"""The relay engine: records in, SMTP transactions out, one disposition each.

    source.poll -> Revoked? forget those partitions' work (in order with records)
      -> Revoking? hold their new work, drain, answer what to commit  `handover`
      -> Assigned? the previous owners' finished-ahead offsets        `offsets`
      -> finished before (read again)? skip it                        `offsets`
      -> decode (bad -> DLQ) -> keyed by another site? forward it      `delays`
      -> not due yet? (wait in memory / postpone: `delays`)
      -> per-domain ready queue (full -> postpone)           `scheduling`
      -> lanes: connection slot, rate token, egress IP       `scheduling`
      -> transactions of at most N recipients                `dispatch`
      -> settlement: events, suppressions, retry, back-offs  `settlement`
      -> produced and acknowledged                           `emission`, `delays`
      -> offset finished -> commit up to the lowest unfinished offset  `window`

This class only wires those modules together and runs the read loop; each
decision lives in the module named beside it (ARCHITECTURE.md, "The path of
a delivery record"). The engine depends only on the protocols in `ports`;
`main` wires in Kafka and SMTP, tests wire in fakes:

    Engine(config, source, sink, transport, suppressions=SuppressionList(),
           ledger=WarmupLedger(config, relay_id), clock=SystemClock(),
           metrics=RelayMetrics(), relay_id="relay-1")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any

from mailpipe.contracts import sites
from mailpipe.contracts.config import RelayConfig
from mailpipe.contracts.site_actions import SiteActions
from mailpipe.contracts.suppressions import CampaignStates, SuppressionList
from mailpipe.contracts.warmup import WarmupLedger
from mailpipe.contracts.wire import WireError, decode_record

from .delays import DUE_SLACK_SECONDS, Postponer, PostponeReason, Waiting
from .dispatch import Dispatcher
from .dkim_signing import Signer
from .emission import DLQReason, Emitter
from .handover import DRAIN_SECONDS, Handover
from .metrics import NO_CAP, RelayMetrics
from .offsets import OffsetTracker
from .ports import (
    Assigned,
    Clock,
    Control,
    RecordSink,
    RecordSource,
    Revoked,
    Revoking,
    SiteLookup,
    SourceRecord,
    Transport,
)
from .scheduling import Scheduler
from .stamps import Stamper
from .tasks import Tasks, task_stacks
from .unsubscribe_links import UnsubscribeLinks
from .window import CommitWindow
from .work import Work

__all__ = ["Engine", "task_stacks"]

log = logging.getLogger("mailpipe.relay.engine")

POLL_IDLE_SECONDS = 0.05  # how often a full window looks again for revocations and relief
STOP_GRACE_SECONDS = 20.0  # in-flight transactions get this long to finish on shutdown
# The warm-up usage report before a rejoin (`Engine._report_warmup_usage`): a
# broker that cannot take it in this long does not hold the rebalance.
USAGE_REPORT_SECONDS = 5.0


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
        sites: SiteLookup | None = None,
        site_actions: SiteActions | None = None,
    ) -> None:
        self.campaigns = campaigns or CampaignStates()
        # Sites from MX hosts (`contracts.sites`, rule 3); None: the config's only.
        self.sites = sites
        self.source = source
        self.ledger = ledger
        self.clock = clock
        self.metrics = metrics
        self.tracker = OffsetTracker()
        self.handover = Handover()
        self.tasks = Tasks()
        self.window = CommitWindow(source, self.tracker, clock)
        self.postponer = Postponer(sink, clock, metrics)
        self.waiting = Waiting(source)
        self.emitter = Emitter(sink, metrics, suppressions)
        # `site_actions`: the pool's, kept current by the events follower (main)
        self.scheduler = Scheduler(
            clock,
            metrics,
            ledger,
            self.tasks,
            self._attempt,
            self._fail,
            actions=site_actions,
            relay_id=relay_id,
        )
        self.dispatch = Dispatcher(
            transport=transport,
            scheduler=self.scheduler,
            postponer=self.postponer,
            emitter=self.emitter,
            suppressions=suppressions,
            campaigns=self.campaigns,
            tracker=self.tracker,
            clock=clock,
            metrics=metrics,
            relay_id=relay_id,
        )
        metrics.warmup_remaining.read = self._warmup_budgets
        self.reconfigure(config)

    def reconfigure(self, config: RelayConfig) -> None:
        """Apply a new config without dropping work (shaping and warm-up update in place).

        All or nothing: what can fail (reading the DKIM and feedback keys) is done before any
        part switches, so a bad reload leaves the running config whole."""
        signer = Signer(config.dkim) if config.dkim else None
        stamper = Stamper(config.feedback, config.pool) if config.feedback else None
        links = (
            UnsubscribeLinks(
                config.unsubscribe,
                config.pool,
                config.feedback,
                stamper.keys if stamper is not None else None,
            )
            if config.unsubscribe
            else None
        )
        self.postponer.reconfigure(config)
        self.config = config
        self.ledger.reconfigure(config)
        self.window.reconfigure(config)
        self.emitter.reconfigure(config)
        self.scheduler.reconfigure(config)
        self.dispatch.reconfigure(config, signer, stamper, links)

    def _attempt(self, work: Work) -> Awaitable[None]:
        return self._step(work.src, work.gen, self.dispatch.attempt(work))

    def _fail(self, work: Work, exc: Exception) -> Awaitable[None]:
        return self._step(work.src, work.gen, self.dispatch.fail(work, exc))

    def _step(
        self, src: SourceRecord, gen: int, step: Coroutine[Any, Any, None]
    ) -> Coroutine[Any, Any, None]:
        """A step with effects outside the relay (SMTP, delay topic, DLQ), run
        under the rebalance hand-over (`handover`): held while its partition
        may move, never beside another copy of the same record, and not at all
        once the partition is gone or the record was finished by an earlier copy."""

        def still_wanted() -> bool:
            if not self.tracker.current(src.tp, gen):
                return False  # the partition went elsewhere: its new owner reads it
            if self.tracker.finished_before(src.tp, src.offset):
                self._already_finished(src, gen)
                return False
            return True

        return self.handover.run(src.tp, src.offset, step, still_wanted)

    def _already_finished(self, src: SourceRecord, gen: int) -> None:
        self.tracker.finish(src.tp, src.offset, gen)
        self.metrics.already_finished.inc()

    def _warmup_budgets(self) -> dict[str, int]:
        budgets = self.ledger.budgets(self.clock.time())
        return {ip: NO_CAP if left is None else left for ip, left in budgets.items()}

    # -- the read loop -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.scheduler.stopping = False
        self.handover.stopping = False
        self.window.open()
        committer = asyncio.create_task(self.window.commit_loop(stop))
        try:
            while not stop.is_set():
                self._wake_waiting()
                room = self.window.room
                if room <= 0:
                    self._take(await self.source.poll(0))  # revocations still arrive at once
                    self.window.full(self._relieve, self._spill_stalled, self.describe, self.tasks)
                    await asyncio.sleep(POLL_IDLE_SECONDS)
                    continue
                batch = await self.source.poll(room)
                self._take(batch)
                self.metrics.in_flight.set(self.tracker.in_flight)
                if not batch:
                    await asyncio.sleep(0)
        finally:
            self.scheduler.stop()  # unfinished work is not committed: the next owner re-reads it
            self.handover.stop()  # steps held by a rebalance give up likewise
            await self.tasks.finish(STOP_GRACE_SECONDS)
            self.dispatch.close()
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self.window.commit()

    def _take(self, items: Sequence[SourceRecord | Control]) -> None:
        for item in items:
            match item:
                case SourceRecord():
                    self._accept(item)
                case Revoked():
                    self._revoke(item)
                case Revoking():
                    self.handover.fence(item.partitions)
                    self.tasks.spawn(self._answer(item))
                case Assigned():
                    self._assigned(item)

    def _accept(self, src: SourceRecord) -> None:
        gen = self.tracker.start(src.tp, src.offset)
        if self.tracker.finished_before(src.tp, src.offset):
            self._already_finished(src, gen)  # read again; an earlier copy was finished
            return
        if src.value is None:
            self.tracker.finish(src.tp, src.offset, gen)  # a tombstone carries nothing to send
            return
        try:
            record = decode_record(src.value)
        except WireError as exc:
            dlq = self.dispatch.to_dlq(src, gen, DLQReason.UNDECODABLE, str(exc))
            self.tasks.spawn(self._step(src, gen, dlq))
            return
        written = self.config.written_site(record.domain)
        work = Work(src, record, gen, site=written or record.domain)
        if written is None and self.sites is not None:
            known = self.sites.known_site(work.domain)
            if known is None:  # its MX answer is not at hand: look it up, then go on
                self.tasks.spawn(self._look_up_site(work, self.sites))
                return
            work.site = known
        self._route(work)

    async def _look_up_site(self, work: Work, sites: SiteLookup) -> None:
        """The record's site once its MX hosts are known (the transport's resolver
        caches the answer for its delivery). A partition revoked meanwhile is the
        next owner's to read again."""
        work.site = await sites.site(work.domain)
        if self.tracker.current(work.src.tp, work.gen):
            self._route(work)

    def _route(self, work: Work) -> None:
        """A decoded record whose site is known: forwarded to its site's partition,
        waiting, postponed or queued."""
        src, gen, record = work.src, work.gen, work.record
        if self._elsewhere(work):
            self.tasks.spawn(self._step(src, gen, self.dispatch.forward(work)))
            return
        due = record.not_before
        now = self.clock.time()
        if due is not None and due > now + DUE_SLACK_SECONDS:
            if self.postponer.waits_in_memory(src.topic):
                self.waiting.add(work, self.postponer.wait_until(src, due, now))
            else:
                self._postpone(work, due, PostponeReason.NOT_YET_DUE)
            return
        self._enqueue(work)

    def _elsewhere(self, work: Work) -> bool:
        """Whether `work` was read under another key than its site's, so another
        relay may own its site (ARCHITECTURE.md, "Limits hold pool-wide"): it goes
        to the site's partition instead (`Postponer.forward`), as a postponed
        record does, and its offset finishes once Kafka has the copy. A record
        forwarded MAX_SITE_HOPS times already (relays disagreeing about its site
        while a config rolls out) is delivered here."""
        key = work.src.key
        if key is not None and key == work.site.encode():
            return False
        if sites.hops(work.src.headers) >= sites.MAX_SITE_HOPS:
            log.warning("%s: forwarded %d times, delivered here", work.site, sites.MAX_SITE_HOPS)
            return False
        return True

    def _wake_waiting(self) -> None:
        """Records whose wait in memory ended: due ones are queued, the others (due
        beyond their delay topic's step) held for a short rest, else postponed again
        (see `Postponer.wait_until` and `Postponer.holds`)."""
        now = self.clock.time()
        for work in self.waiting.due(now):
            if not self.tracker.owns(work.src.tp):
                continue
            due = work.record.not_before
            if due is not None and due > now + DUE_SLACK_SECONDS and self.postponer.steps:
                if self.postponer.holds(due - now, self.waiting.held):
                    self.waiting.hold(work, due)
                else:
                    self._postpone(work, due, PostponeReason.NOT_YET_DUE)
            else:
                self._enqueue(work)

    def _enqueue(self, work: Work) -> None:
        refused = self.scheduler.enqueue(work)
        if refused is not None:
            due = self.clock.time() + self.postponer.shortest_seconds
            self._postpone(work, due, refused)

    def _relieve(self) -> None:
        due = self.clock.time() + self.postponer.shortest_seconds
        for work in self.scheduler.relieve():
            self._postpone(work, due, PostponeReason.WINDOW_RELIEF)
        for work in self.waiting.release_held():  # back to a delay topic, due when they were
            self._postpone(work, work.record.not_before or due, PostponeReason.WINDOW_RELIEF)

    def _spill_stalled(self) -> None:
        """The tarpit budget (`stalls`): cut domains stalled over it, postpone their queues."""
        due = self.clock.time() + self.postponer.shortest_seconds
        for work in self.scheduler.spill_stalled():
            self._postpone(work, due, PostponeReason.STALLED_DOMAIN)

    def _postpone(self, work: Work, due: float, reason: PostponeReason) -> None:
        self.tasks.spawn(self._step(work.src, work.gen, self.dispatch.postpone(work, due, reason)))

    def _revoke(self, revoked: Revoked) -> None:
        """Partitions moved to another replica: drop their queued and waiting work
        uncommitted (the new owner re-reads it) and let running transactions finish."""
        gone = frozenset(revoked.partitions)
        dropped = self.scheduler.drop(gone) + self.waiting.drop(gone)
        log.info(
            "revoked %s: %d queued records dropped for the new owner",
            sorted(f"{tp.topic}/{tp.partition}" for tp in gone),
            dropped,
        )
        self.tracker.revoke(list(gone))

    async def _answer(self, revoking: Revoking) -> None:
        """A rebalance starts: once the steps running on the partitions that may
        move are done (at most DRAIN_SECONDS), tell the source what to commit
        for them before the relay rejoins, finished-ahead offsets included."""
        tps = set(revoking.partitions)
        if not await self.handover.drained(tps, DRAIN_SECONDS):
            log.warning(
                "rebalance: %d attempts still running on revoked partitions after %.0f s;"
                " if their partitions move, the new owner sends them again",
                self.handover.active(tps),
                DRAIN_SECONDS,
            )
        await self._report_warmup_usage()
        offsets = {tp: o for tp, o in self.tracker.committable().items() if tp in tps}
        revoking.reply(offsets, self.tracker.finished_ahead(offsets))

    async def _report_warmup_usage(self) -> None:
        """Before the rejoin: what this relay counted against today's warm-up caps,
        attempts in flight included, so the relays that take over partitions count
        it before they send (`WarmupLedger.hold`). Not written, the others see
        only this relay's events, and a warming IP may exceed its day's cap by
        what is in flight (the rejoin is not held for it)."""
        usage = self.ledger.usage(self.clock.time())
        if not usage.counts:
            return
        try:
            await asyncio.wait_for(self.emitter.warmup_usage(usage), USAGE_REPORT_SECONDS)
        except Exception as exc:  # a broker that cannot take it now: never hold the rejoin
            log.warning("rebalance: warm-up usage not written (%s)", type(exc).__name__)

    def _assigned(self, assigned: Assigned) -> None:
        """A rebalance ended: learn what the previous owners finished past their
        commits, then let held steps go on (those of partitions gone give up)."""
        for tp, committed in assigned.committed.items():
            self.tracker.learn(tp, committed, assigned.finished_ahead.get(tp, frozenset()))
        self.handover.lift()

    def describe(self) -> dict[str, Any]:
        """The engine's state, for `kill -USR1` and the stuck-window warning."""
        return {
            "in_flight": self.tracker.in_flight,
            "uncommitted": self.tracker.uncommitted,
            **self.scheduler.describe(),
            "waiting": len(self.waiting),
            "held": self.waiting.held,
            "tasks": len(self.tasks),
            "stopping": self.scheduler.stopping,
            "handover": self.handover.describe(),
            "partitions": self.tracker.describe(),
        }
