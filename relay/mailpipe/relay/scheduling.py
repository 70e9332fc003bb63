"""Ready queues and lanes: the one place a site's limits are enforced.

Each destination domain has a bounded ready queue; the domains of a site
(`contracts.sites`) share its `max_connections` lanes; a lane is one
connection's worth of sequential work. A lane hands its slot over after each
attempt while another domain of the site waits in line (`_hand_over`), so
domains sharing a limit take it in turn. Before a lane
takes a record it waits for its turn at the site's rate
(`messages_per_minute`, a token bucket with a burst of one); the record's
token itself is taken by the transport just before its MAIL FROM, on a
greeted connection (`tokens`), so what arrives at the receiver keeps the
rate however long connections take to open; a lane exists only while it holds one of
the site's connection slots (`max_connections`); the site's
`messages_per_connection` travels in the envelope to the transport's
connection pool; and the egress IP is chosen here, skipping IPs the site
suspended or slowed (a reply rule's action, `contracts.site_actions`: held by
every relay of the pool) and IPs out of warm-up budget
(ARCHITECTURE.md, "Limits hold pool-wide"). `throttle` holds the counters; this
module is where they are consulted.

Because every domain has its own queue and every site its own lanes, a
throttled, backed-off or dead destination only ever waits on itself (and on
the domains sharing its site) (ARCHITECTURE.md, "No head-of-line blocking"). A record waits
for its token *in the queue*, so a full read window can still move it to a delay
topic (`relieve`).

A record is one message for the rate, however many transactions its
recipients need (`recipients_per_transaction` splits only large records).

A domain whose attempts stall (a tarpit) is cut when the read window is
full (`spill_stalled`, the budget in `stalls`), so the lanes it holds do not
pin the window either.

(Just over 300 lines: queues, lanes and the egress choice all consult the
same shaping state; what waits for a token already lives in `tokens`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mailpipe.contracts.bounces import ActionKind
from mailpipe.contracts.config import RelayConfig, Throttle
from mailpipe.contracts.site_actions import STATE_OF, SiteAction, SiteActions
from mailpipe.contracts.warmup import WarmupLedger

from .delays import PostponeReason
from .metrics import RelayMetrics
from .ports import Clock, TopicPartition
from .settlement import Settlement
from .stalls import Stalls
from .tasks import Tasks
from .throttle import Shaper, Shaping, slowed_rate
from .tokens import RecordToken
from .work import Work

# After a rebalance an attempt waits this long at most for the warm-up budgets
# to settle (the events topic read past it: usually well under a second), so
# a warming IP keeps its day's share rather than lose it to a warm one.
SETTLING_WAIT_SECONDS = 10.0
# Still settling after that, with no uncapped IP: tried again this soon
# (through the shortest delay step), never postponed to the next day.
SETTLING_RETRY_SECONDS = 1.0

log = logging.getLogger("mailpipe.relay.engine")


@dataclass
class DomainQueue:
    site: str  # what its lanes count under (`contracts.sites`)
    items: deque[Work] = field(default_factory=deque)
    lanes: int = 0


class Egress(NamedTuple):
    """The IP a transaction leaves from, and the name it greets with."""

    address: str
    helo: str


class NoEgress(NamedTuple):
    """No IP may send now; `due` is when one may (a site action ends or lets the
    next message go, or the next warm-up day)."""

    due: float


class Scheduler:
    def __init__(
        self,
        clock: Clock,
        metrics: RelayMetrics,
        ledger: WarmupLedger,
        tasks: Tasks,
        attempt: Callable[[Work], Awaitable[None]],
        fail: Callable[[Work, Exception], Awaitable[None]],
        *,
        actions: SiteActions | None = None,
        relay_id: str | None = None,
    ) -> None:
        self.clock = clock
        self.metrics = metrics
        self.ledger = ledger
        self.tasks = tasks
        self._attempt = attempt
        self._fail = fail
        self.relay_id = relay_id
        self.shaping = Shaping(actions=actions if actions is not None else SiteActions())
        metrics.suspensions_active.set_function(self._suspensions_active)
        self.stalls = Stalls(clock)
        self.stopping = False
        self._queues: dict[str, DomainQueue] = {}
        # site -> domains waiting for one of its connection slots, first come first
        self._waiting_for_slot: dict[str, dict[str, None]] = {}
        self._waiting_lanes: set[asyncio.Task[Any]] = set()
        metrics.queue_depths.read = lambda: {d: len(q.items) for d, q in self._queues.items()}

    def reconfigure(self, config: RelayConfig) -> None:
        """Shapers pick up a changed throttle at their next use (see `Shaping.shaper`)."""
        self.config = config

    # -- ready queues ------------------------------------------------------------

    def enqueue(self, work: Work) -> PostponeReason | None:
        """Queue a record for its domain's lanes; or why not, when its queue is full
        or its domain was cut for stalling (the caller postpones it rather than
        hold up its partition: ARCHITECTURE.md, "No head-of-line blocking")."""
        domain = work.domain
        if self.stalls.cut_recently(domain):
            return PostponeReason.STALLED_DOMAIN
        q = self._queues.get(domain)
        if q is None:
            q = self._queues[domain] = DomainQueue(work.site)
        q.site = work.site  # a reload may move a domain to another site: its next lanes count there
        if len(q.items) >= self.config.kafka.ready_queue_per_domain:
            return PostponeReason.QUEUE_FULL
        q.items.append(work)
        self._start_lanes(domain)
        return None

    def drop(self, partitions: Collection[TopicPartition]) -> int:
        """Forget queued records of revoked partitions; running transactions finish."""
        dropped = 0
        for q in self._queues.values():
            kept = deque(w for w in q.items if w.src.tp not in partitions)
            dropped += len(q.items) - len(kept)
            q.items = kept
        return dropped

    def stop(self) -> None:
        """Take no new work: queued records stay unfinished (re-read by the next
        owner) and lanes waiting for a token end without a connection to close."""
        self.stopping = True
        for q in self._queues.values():
            q.items.clear()
        for task in list(self._waiting_lanes):
            task.cancel()

    def relieve(self) -> list[Work]:
        """Empty the largest queue of a domain that waits on a limit of its own
        (a rate, or every IP suspended for its site): what the window moves to a
        delay topic when such a queue pins it. A merely busy domain drains by
        itself, and moving it would cost a delay step."""
        now = self.clock.time()
        ips = [e.address for e in self.config.egress]
        actions = self.shaping.actions

        def held_back(domain: str, q: DomainQueue) -> bool:
            throttled = self.config.throttle_for_site(q.site).messages_per_minute is not None
            return throttled or all(actions.suspended(q.site, ip, now) for ip in ips)

        candidates = [(d, q) for d, q in self._queues.items() if q.items and held_back(d, q)]
        if not candidates:
            return []
        domain, q = max(candidates, key=lambda kv: len(kv[1].items))
        taken = list(q.items)
        q.items.clear()  # lanes waiting for a token find nothing and end
        log.info("window full: %d records of %s move to the delay topic", len(taken), domain)
        return taken

    def spill_stalled(self) -> list[Work]:
        """Cut the domains whose oldest attempt outlived the tarpit budget (`stalls`)
        and empty their queues: what the window postpones when it is full."""
        budget = self.config.delivery.stall_budget_seconds
        taken: list[Work] = []
        for domain in self.stalls.cut(budget):
            q = self._queues.get(domain)
            queued = list(q.items) if q is not None else []
            if q is not None:
                q.items.clear()
            taken.extend(queued)
            log.warning(
                "%s stalled over its %g-s budget while the read window was full:"
                " attempts cut (deferred), %d queued records postponed",
                domain,
                budget,
                len(queued),
            )
        return taken

    # -- lanes: connection slots and rate tokens ----------------------------------

    def _shaper(self, site: str) -> Shaper:
        throttle = self.config.throttle_for_site(site)
        return self.shaping.shaper(site, throttle, self.clock.monotonic())

    def _start_lanes(self, domain: str) -> None:
        """Open lanes while the domain has more records than lanes and its site has
        a free connection slot; otherwise wait in the site's line for the next
        free one (`_waiting_for_slot`, first come first: `_hand_over`)."""
        if self.stopping:
            return
        q = self._queues[domain]
        shaper = self._shaper(q.site)
        line = self._waiting_for_slot.setdefault(q.site, {})
        while q.items and q.lanes < len(q.items):
            if not shaper.can_open():
                line[domain] = None  # joins the back of the line, or keeps its place
                return
            line.pop(domain, None)
            shaper.connections += 1
            q.lanes += 1
            self.tasks.spawn(self._lane(domain, q.site, shaper))
        line.pop(domain, None)  # wants no more lanes
        if not line:
            del self._waiting_for_slot[q.site]

    def _hand_over(self, site: str, shaper: Shaper) -> None:
        """A slot of `site` is free: the domains in line take it in their order."""
        line = self._waiting_for_slot.get(site)
        while line and shaper.can_open() and not self.stopping:
            head = next(iter(line))
            self._start_lanes(head)  # opens lanes, or leaves the line with nothing to send
            if head in line:
                break  # still in line: the site's slots are all taken
            line = self._waiting_for_slot.get(site)

    async def _lane(self, domain: str, site: str, shaper: Shaper) -> None:
        q = self._queues[domain]
        try:
            while q.items and not self.stopping:
                # Wait for the lane's turn before taking a record, so records
                # stay in the queue (and can be moved away) while they wait, and
                # a lane starts an attempt only when its token should be free.
                # The token itself is taken by the transport just before MAIL
                # FROM (`tokens`): receivers count what arrives.
                waited = 0.0
                if shaper.bucket is not None:
                    now = self.clock.monotonic()
                    waited = shaper.bucket.turn(now) - now
                    if waited > 0:
                        await self._wait_for_token(waited)
                        if self.stopping:
                            return
                if not q.items:
                    break  # moved away while we waited
                work = q.items.popleft()
                work.token = RecordToken(
                    shaper.bucket,
                    self.clock,
                    self._observe_wait(domain, waited),
                    self._wait_for_token,
                )
                try:
                    await self._attempt(work)
                except Exception as exc:
                    # The record's boundary: whatever went wrong, it gets a final
                    # disposition instead of an offset that never finishes and
                    # stops every commit of its partition (issue 10, finding 3).
                    log.exception("attempt failed", extra={"message_id": work.record.id})
                    await self._fail(work, exc)
                line = self._waiting_for_slot.get(site)
                if line and (len(line) > 1 or domain not in line):
                    # Another domain of the site waits for a slot: hand this one
                    # over after each attempt, so domains sharing a limit share it
                    # in turn instead of the first one keeping it while its queue
                    # lasts. (Its connection stays pooled in the transport: the
                    # next domain reuses it when they share an MX host.)
                    break
        finally:
            q.lanes -= 1
            shaper.connections -= 1
            if q.items and q.lanes < len(q.items) and not self.stopping:
                self._waiting_for_slot.setdefault(site, {})[domain] = None  # to the back
            self._hand_over(site, shaper)

    def _observe_wait(self, domain: str, turn: float) -> Callable[[float], None]:
        """The record's wait for its rate: its lane's turn plus its token's wait."""

        def observe(take: float) -> None:
            if turn + take > 0:
                self.metrics.throttle_wait.labels(domain).observe(turn + take)

        return observe

    async def _wait_for_token(self, seconds: float) -> None:
        """A lane waiting for its turn (no connection held) or for its record's
        token (before any MAIL FROM of the record) may be cancelled on shutdown;
        its record stays unfinished."""
        task = asyncio.current_task()
        assert task is not None
        self._waiting_lanes.add(task)
        try:
            await self.clock.sleep(seconds)
        finally:
            self._waiting_lanes.discard(task)

    # -- egress IPs: back-offs and warm-up budgets ---------------------------------

    async def budgets_known(self) -> None:
        """Returns when the warm-up budgets are settled after a rebalance
        (`WarmupLedger.hold`), or after SETTLING_WAIT_SECONDS."""
        if self.ledger.settling:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ledger.released.wait(), SETTLING_WAIT_SECONDS)

    def choose_egress(self, domain: str, site: str, count: int, now: float) -> Egress | NoEgress:
        """An IP that may send `count` messages to `domain` now (`now`: wall
        clock), or when one may: IPs the site suspended are skipped until the
        suspension ends (a provider's 421 for one of its domains holds for all
        of them, on every relay of the pool), IPs it slowed until their next
        message is due, IPs out of warm-up budget until the next day.
        `count_sent` then spends the budget."""
        mono = self.clock.monotonic()
        ips = [e.address for e in self.config.egress]
        actions = self.shaping.actions
        excluded = {ip for ip in ips if actions.suspended(site, ip, now)}
        slowed: dict[str, float] = {}  # IP -> seconds until its slowed pace lets one go
        for ip in ips:
            held = actions.holding(site, ip, ActionKind.SLOW, now)
            if held is None:
                self.shaping.slowed.pop((site, ip), None)
            elif ip not in excluded:
                rate = slowed_rate(held, self.config.throttle_for_site(site))
                slowed[ip] = self.shaping.slow_bucket(site, ip, rate, mono).free_in(mono)
        excluded.update(ip for ip, wait in slowed.items() if wait > 0)
        chosen = self.ledger.choose(domain, count, now, frozenset(excluded), site)
        if chosen is None and self.ledger.settling:
            # Budgets are unknown until the events topic is read past the
            # rebalance (`WarmupLedger.hold`): a second, not the next day.
            return NoEgress(now + SETTLING_RETRY_SECONDS)
        if chosen is None:
            ends = [w for w in slowed.values() if w > 0]
            end = actions.suspension_end(site, ips, now)
            if end is not None:
                ends.append(end - now)
            due = now + min(ends) if ends else self.ledger.next_day_start(now)
            return NoEgress(due)
        if chosen in slowed:
            self.shaping.slowed[(site, chosen)].take(mono)
        return Egress(chosen, next(e.helo for e in self.config.egress if e.address == chosen))

    def count_sent(self, egress: Egress, domain: str, site: str, count: int, now: float) -> None:
        """Spend `count` of the IP's warm-up budget (its total and `site`'s) before
        the attempt, so two lanes cannot both take its last message; `not_sent`
        gives it back."""
        self.ledger.record(egress.address, domain, count, now, site)

    def not_sent(self, egress: Egress, domain: str, site: str, count: int, now: float) -> None:
        """The attempt wrote no MAIL FROM (no connection, refused at greeting):
        nothing arrived, so the warm-up budget counts it as not sent, by the
        same rule as the rate token (`tokens`)."""
        self.ledger.unrecord(egress.address, domain, count, now, site)

    def settled(
        self, egress: Egress, domain: str, site: str, settlement: Settlement
    ) -> list[SiteAction]:
        """What an attempt taught about the IP: the site actions its replies' rules
        ask for (suspend or slow the site for this IP; a repeat right after one
        ended doubles it), applied here at once and returned for the caller to
        write to the events topic, where the pool's other relays apply them; and
        its dispositions counted towards the warm-up bounce and complaint rates."""
        now = self.clock.time()
        new: list[SiteAction] = []
        for asked in settlement.actions:
            self.metrics.backoffs.labels(domain, egress.address, asked.action.kind).inc()
            record = self.shaping.actions.decide(
                site,
                egress.address,
                asked.action,
                now,
                reply=asked.reply,
                bounce_class=asked.bounce_class,
                relay=self.relay_id,
            )
            if record is not None and self.shaping.actions.apply(record):
                # Counted by the relay that got the reply: summed over the
                # pool's relays, each action once.
                self.metrics.site_actions.labels(site, egress.address, record.action).inc()
                log_action(record, "")
                new.append(record)
        for ev in settlement.events:
            self.ledger.outcome(egress.address, ev.disposition)
        return new

    def _suspensions_active(self) -> int:
        now = self.clock.time()
        return sum(1 for a in self.shaping.actions.active(now) if a.action is ActionKind.SUSPEND)

    def throttle(self, site: str) -> Throttle:
        """The site's shaping: `recipients_per_transaction` shapes the
        transactions, `messages_per_connection` travels to the connection pool."""
        return self.config.throttle_for_site(site)

    # -- state -------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "queued": {d: len(q.items) for d, q in self._queues.items() if q.items},
            "lanes": {d: q.lanes for d, q in self._queues.items() if q.lanes},
            "stalls": self.stalls.describe(),
            "site_actions": [
                {"site": a.site, "ip": a.egress_ip, "action": a.action.value, "until": a.until}
                for a in self.shaping.actions.active(self.clock.time())
            ],
        }


def log_action(record: SiteAction, via: str) -> None:
    """One warning line per site action held: what an operator greps for."""
    log.warning(
        "%s %s on %s until %s after %r%s",
        record.site,
        STATE_OF[record.action],
        record.egress_ip,
        time.strftime("%H:%M:%SZ", time.gmtime(record.until)),
        record.reply,
        via,
    )
