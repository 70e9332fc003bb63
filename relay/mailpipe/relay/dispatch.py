"""One attempt of one record, from its lane to its settlement (rules quoted: ARCHITECTURE.md).

    campaign paused?     -> postpone (campaign_paused)   cancelled? -> FAILED events
    suppressed addresses -> SUPPRESSED events ("Suppressed is never sent"); the rest are live
    egress IP            -> scheduling (back-offs, warm-up); none -> postpone (no_egress_ip)
    message              -> built once (bad -> DLQ); DKIM: headers here, RSA in a thread
    transactions         -> at most `recipients_per_transaction` recipients each;
                            watched by the tarpit budget (`stalls`): a cut one is deferred;
                            the rate token taken by the transport before MAIL FROM (`tokens`);
                            no MAIL FROM written -> the warm-up count given back
    settlement           -> events, suppressions, back-offs, a retry record
    every produce acknowledged -> the record's offset is finished ("Nothing lost")

Decisions live elsewhere (what a reply means: `classify`; what an attempt
means: `settlement`; which IP and when: `scheduling`); this module runs the
steps in order and finishes the record's offset exactly once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable

from mailpipe.contracts.bounces import classifier_for
from mailpipe.contracts.config import RelayConfig
from mailpipe.contracts.strikes import StrikeLedger
from mailpipe.contracts.suppressions import CampaignStates, SuppressionList
from mailpipe.contracts.wire import CampaignState, Disposition, Recipient

from .classify import reply
from .delays import Postponer, PostponeReason
from .dkim_signing import Prepared, Signer, SigningError
from .emission import DLQReason, Emitter
from .message import MessageError, build_message
from .metrics import RelayMetrics
from .offsets import OffsetTracker
from .ports import Clock, Envelope, SourceRecord, Stage, TransactionResult, Transport
from .scheduling import Egress, NoEgress, Scheduler
from .settlement import Transaction, cancelled, chunks, event, settle
from .stalls import Attempt
from .stamps import Stamper
from .unsubscribe_links import UnsubscribeLinks
from .work import Work
from .workers import WorkerThreads

ERROR_TEXT_CHARS = 300  # of an unexpected exception's text in a DLQ reason
# DKIM signing threads: RSA scales with cores, and more threads than cores only
# queue; a few at most, the event loop needs a core of its own.
SIGNING_THREADS = max(1, min(4, os.cpu_count() or 1))


class Dispatcher:
    def __init__(
        self,
        *,
        transport: Transport,
        scheduler: Scheduler,
        postponer: Postponer,
        emitter: Emitter,
        suppressions: SuppressionList,
        campaigns: CampaignStates,
        tracker: OffsetTracker,
        clock: Clock,
        metrics: RelayMetrics,
        relay_id: str,
    ) -> None:
        self.transport = transport
        self.scheduler = scheduler
        self.postponer = postponer
        self.emitter = emitter
        self.suppressions = suppressions
        self.campaigns = campaigns
        self.tracker = tracker
        self.clock = clock
        self.metrics = metrics
        self.relay_id = relay_id
        self.strikes = StrikeLedger()  # outlives reloads: a new rule set keeps the count
        self._signing: WorkerThreads[bytes] = WorkerThreads(SIGNING_THREADS, "mailpipe-dkim")

    def reconfigure(
        self,
        config: RelayConfig,
        signer: Signer | None,
        stamper: Stamper | None = None,
        links: UnsubscribeLinks | None = None,
    ) -> None:
        """`signer`, `stamper` and `links` are built by the caller before anything is
        switched: reading their keys is the one step of a reload that can fail."""
        self.config = config
        self.signer = signer
        self.stamper = stamper
        self.links = links
        self.classifier = classifier_for(config.bounces)

    # -- finishing a record's offset ---------------------------------------------

    async def finish_after(self, work: Work, sends: list[Awaitable[None]]) -> None:
        """Await every produce this record caused, then mark its offset finished."""
        if len(sends) == 1:
            await sends[0]  # the common case; gather() would cost a future more
        elif sends:
            await asyncio.gather(*sends)
        self.tracker.finish(work.src.tp, work.src.offset, work.gen)

    async def postpone(self, work: Work, due: float, reason: PostponeReason) -> None:
        """Move a record, unchanged but for not_before, to a delay topic."""
        postponed = self.postponer.postpone(
            work.record, due, reason, work.src.headers, site=work.site
        )
        await self.finish_after(work, [postponed])

    async def forward(self, work: Work) -> None:
        """Move a record read under another key to its site's partition
        (`delays.Postponer.forward`)."""
        await self.finish_after(work, [self.postponer.forward(work)])

    async def to_dlq(self, src: SourceRecord, gen: int, kind: DLQReason, reason: str) -> None:
        await self.emitter.dlq(src, kind, reason)
        self.tracker.finish(src.tp, src.offset, gen)

    async def fail(self, work: Work, exc: Exception) -> None:
        """A record the relay could not handle: a failed event per recipient (so a
        campaign's counts still complete) and a DLQ copy naming the error."""
        reason = f"relay error: {type(exc).__name__}: {str(exc)[:ERROR_TEXT_CHARS]}"
        now = self.clock.time()
        failed = [
            event(
                work.record, r.address, Disposition.FAILED, now, self.relay_id, reason="relay_error"
            )
            for r in work.record.recipients
        ]
        # Best effort: the DLQ copy below is what must not be lost.
        await asyncio.gather(
            *(self.emitter.event(e, work.src.headers) for e in failed), return_exceptions=True
        )
        await self.to_dlq(work.src, work.gen, DLQReason.RELAY_ERROR, reason)

    # -- the attempt ---------------------------------------------------------------

    async def attempt(self, work: Work) -> None:
        record = work.record
        domain = work.domain
        now = self.clock.time()
        state = self.campaigns.state(record.campaign)
        if state == CampaignState.PAUSED:
            # Suspended campaign: wait in the longest delay step and look again then.
            due = now + self.postponer.longest_seconds
            await self.postpone(work, due, PostponeReason.CAMPAIGN_PAUSED)
            return
        if state == CampaignState.CANCELLED:
            settlement = cancelled(record, now, self.relay_id)
            await self.finish_after(work, self.emitter.settlement(settlement, work.src.headers))
            return

        sends: list[Awaitable[None]] = []
        live = []
        mailing_list = record.list_unsubscribe.list if record.list_unsubscribe else None
        for rcpt in record.recipients:
            reason = self.suppressions.reason(rcpt.address, mailing_list)
            if reason is None:
                live.append(rcpt)
                continue
            suppressed = event(
                record, rcpt.address, Disposition.SUPPRESSED, now, self.relay_id, reason=reason
            )
            sends.append(self.emitter.event(suppressed, work.src.headers))
        if not live:
            await self.finish_after(work, sends)
            return

        if self.scheduler.ledger.settling:
            await self.scheduler.budgets_known()
            now = self.clock.time()
        egress = self.scheduler.choose_egress(domain, work.site, len(live), now)
        if isinstance(egress, NoEgress):
            remaining = record.model_copy(update={"recipients": live})
            sends.append(
                self.postponer.postpone(
                    remaining,
                    egress.due,
                    PostponeReason.NO_EGRESS_IP,
                    work.src.headers,
                    site=work.site,
                )
            )
            await self.finish_after(work, sends)
            return
        unsigned = None
        if work.message is None:
            try:
                stamp = self.stamper.stamp(record, now) if self.stamper is not None else None
                message = build_message(
                    record, now, None, stamp.headers if stamp is not None else (), links=self.links
                )
                if self.signer is None:
                    work.message = message
                else:
                    unsigned = self.signer.prepare(message)
                work.sender = stamp.return_path if stamp is not None else record.sender
            except (MessageError, SigningError) as exc:
                if sends:
                    await asyncio.gather(*sends)  # suppressed recipients are decided already
                await self.to_dlq(work.src, work.gen, DLQReason.UNRENDERABLE, str(exc))
                return
        self.scheduler.count_sent(egress, domain, work.site, len(live), now)
        if unsigned is not None:
            try:
                work.message = await self._sign(unsigned)
            except BaseException:
                self.scheduler.not_sent(egress, domain, work.site, len(live), now)  # nothing sent
                raise
        await self._deliver(work, live, egress, sends, counted_at=now)

    async def _sign(self, unsigned: Prepared) -> bytes:
        """The signature's hashing and RSA step in a worker thread: `cryptography`
        and hashlib release the GIL while they compute, so the event loop goes on
        delivering other records meanwhile (on two cores, about the whole RSA
        cost of a message off the loop's core)."""
        return await self._signing.submit(unsigned.finish)

    def close(self) -> None:
        """Stop the signing threads (the relay stops; a later run starts new ones)."""
        self._signing.stop()

    async def _deliver(
        self,
        work: Work,
        live: list[Recipient],
        egress: Egress,
        sends: list[Awaitable[None]],
        *,
        counted_at: float,
    ) -> None:
        """The transactions of the live recipients, then their settlement. The
        transport takes the record's rate token (`work.token`) just before its
        MAIL FROM; an attempt that wrote none gives back its warm-up count."""
        record, domain = work.record, work.domain
        assert work.message is not None
        transactions = []
        throttle = self.scheduler.throttle(work.site)
        with self.scheduler.stalls.watch(domain) as watch:
            for part in chunks(live, throttle.recipients_per_transaction):
                envelope = Envelope(
                    domain,
                    work.sender or record.sender,
                    tuple(r.address for r in part),
                    work.message,
                    egress.address,
                    egress.helo,
                    throttle.messages_per_connection,
                    work.token,
                    work.site,
                    throttle.max_connections,
                )
                transactions.append(Transaction(part, await self._transact(envelope, watch)))
        if work.token is not None and not work.token.used:
            self.scheduler.not_sent(egress, domain, work.site, len(live), counted_at)

        settlement = settle(
            record,
            transactions,
            egress_ip=egress.address,
            now=self.clock.time(),
            retry=self.config.retry,
            relay_id=self.relay_id,
            pool=self.config.pool,
            classifier=self.classifier,
            strikes=self.strikes,
            site=work.site,
        )
        for action in self.scheduler.settled(egress, domain, work.site, settlement):
            sends.append(self.emitter.site_action(action))  # to the pool's other relays
        for ev in settlement.events:
            self.metrics.delivered(ev.disposition.value, domain, egress.address)
        for tx in transactions:
            if tx.result.tls is not None:
                self.metrics.tls(domain, tx.result.tls)
        sends.extend(self.emitter.settlement(settlement, work.src.headers))
        retry = settlement.retry
        if retry is not None and retry.not_before is not None:
            sends.append(
                self.postponer.postpone(
                    retry, retry.not_before, PostponeReason.RETRY, work.src.headers, site=work.site
                )
            )
        await self.finish_after(work, sends)

    async def _transact(self, envelope: Envelope, watch: Attempt) -> TransactionResult:
        """One transaction, unless the tarpit budget cuts it (`stalls`): then every
        recipient is deferred with a reply naming the budget (no back-off: our
        decision, not the receiver's), and the record goes the retry way."""
        if not watch.cut:
            try:
                return await self.transport.deliver(envelope)
            except asyncio.CancelledError:
                if not watch.cut or not watch.uncut():
                    raise  # shutdown, not the budget
        budget = self.config.delivery.stall_budget_seconds
        cut = reply(
            451,
            f"4.4.2 {envelope.domain}: attempt cut after {budget:g} s, over the domain's"
            " time budget (delivery.stallBudgetSeconds) while the read window was full",
        )
        rcpts = envelope.recipients
        return TransactionResult(dict.fromkeys(rcpts, cut), detail=dict.fromkeys(rcpts, Stage.LOST))
