"""IP warm-up: daily caps per egress IP, in total and per destination site.

A new IP earns reputation by sending a little more each day. Its warm-up day
is 1 + the number of earlier calendar days on which it actually sent (plus a
manual offset), so a weekend without traffic does not skip a step. The cap of
that day holds in total and per site (`contracts.sites`: a domain group, a
domain with its own throttle, or the provider its MX hosts name, such as
`google.com`); when a warming IP is out of budget, mail goes to the pool's
warm IPs, and when none can take it, it waits (ARCHITECTURE.md, "Limits hold
pool-wide": never dropped, never over).

A send counts under the site the relay delivered it for (`Event.site`; an
older event without it, under the site the config names for its domain), and
under the domain's group as well when the domain is a site of its own (a
throttle override), so a group's cap counts each of its domains as it always
did. Only the sites some step caps are counted beside the groups: a pool
mails thousands of sites a day, and a count nobody reads is memory (so a site
cap added by a reload counts that day's sends from then on; a restart replays
them all).

The ledger is rebuilt from the events topic at start (`observe`), and keeps
following it so sends of other replicas count too; this relay's own sends are
counted when made (`record`) and skipped when their events come back.

Several replicas send from the same IPs, and the events of the others arrive
with a lag, so each replica may use only its share of a cap that several of
them spend (the IP's daily total, a group cap counted for a domain that is its
own site): the fraction of the outbound topic's partitions it owns
(`set_share`). The shares add up to at most the cap, so the pool never goes
over it even while events are in flight. A site's cap is not divided: all its
records are on its partition, which one replica owns, so that replica may
spend all of it (dividing it left the rest of the cap unused by the pool).
When the partition moves, the new owner sends on a capped IP only after it
read the events topic past the rebalance, the old owner's attempts in flight
included (`hold`, `WarmupUsage`), so the site's count is whole before it
spends it. Not owned, and so divided: a group one of whose domains is a site
of its own (its sends count under the group from another partition). The one
way a site's cap goes over is the one its rate has too: a record delivered
off its site's partition, after relays disagreeing about its site (a config
rollout half done) forwarded it `sites.MAX_SITE_HOPS` times.

Both planes use it: the relay to enforce the caps, the operator to replay the
same events into each IP's warm-up day and cap for the pool's status. It is
pure (events in, decisions out; time passed in), so it lives with the
contracts both planes import rather than inside either of them.

A pause for the bounce or complaint rate is lifted by an `IPUnpaused` record
on the same events topic (the operator writes it when a SendingPool carries
the `mailpipe.io/unpause-ip` annotation). Because the pause is re-derived from
the topic at every start, the lift must live there too: every relay and the
operator replay it and agree. After it, the IP's rate sample starts afresh, so
new bounces may pause it again. Replay order across partitions is arbitrary,
so the lift is written once to *every* partition: any event appended after it
is then replayed after at least one copy of it (the first copy resets the
sample, later copies change nothing), and an event older than the lift, read
after it from another partition, is recognised by its time and not judged again. (Over 300
lines because the un-pause record and the ledger that replays it are one
contract: splitting them would let the two drift.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import EgressIP, RelayConfig
from .site_actions import SITE_ACTION_MARKER, SiteAction, decode_site_action
from .wire import WIRE_VERSION, Disposition, Event, UnixSeconds, WireError, decode_event

_COUNTED = frozenset({Disposition.DELIVERED, Disposition.BOUNCED, Disposition.DEFERRED})
ALL = "*"  # the per-day total, beside the per-site counts
UNPAUSE_ANNOTATION = "mailpipe.io/unpause-ip"  # on a SendingPool: lift this IP's pause
UNPAUSED_KIND: Literal["ip_unpaused"] = "ip_unpaused"
# Recognises an un-pause record without decoding it: an Event's JSON never has
# this key (`kind` is not an Event field, and a quote inside a string is escaped).
_UNPAUSED_MARKER = b'"kind":"ip_unpaused"'
USAGE_KIND: Literal["warmup_usage"] = "warmup_usage"
_USAGE_MARKER = b'"kind":"warmup_usage"'
MAX_USAGE_COUNTS = 10_000  # (IP, site) pairs in one report: far above any pool's
# A site's name in a report: a domain name is at most 253, an MX site joins a few.
MAX_USAGE_KEY_LENGTH = 1000


class IPUnpaused(BaseModel):
    """Value on `<pool>.events` that lifts a warming IP's rate pause, for good."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = WIRE_VERSION
    kind: Literal["ip_unpaused"] = UNPAUSED_KIND
    egress_ip: str = Field(max_length=64)
    time: UnixSeconds = Field(
        description="unix seconds; outcomes of earlier events are not judged again"
    )
    by: str | None = Field(default=None, max_length=200, description="who lifted it")


def encode_unpaused(record: IPUnpaused) -> bytes:
    return record.model_dump_json(exclude_none=True).encode()


class UsageCount(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ip: str = Field(max_length=64)
    key: str = Field(
        max_length=MAX_USAGE_KEY_LENGTH,
        description=f"a site (a domain group, a domain, an MX provider), or {ALL!r} for the total",
    )
    n: int = Field(strict=True, ge=0)


class WarmupUsage(BaseModel):
    """Value on `<pool>.events`: what one relay has counted against today's warm-up
    caps, attempts still running included, written when a rebalance starts.

    A relay counts an attempt before it starts and writes its event when it
    ends, so a relay that takes over partitions sees the others' events but
    not their attempts in flight; from these it counts what it cannot see yet
    (`WarmupLedger.observe`), and it sends nothing on a warming IP before it
    has read the topic past the rebalance (`WarmupLedger.hold`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = WIRE_VERSION
    kind: Literal["warmup_usage"] = USAGE_KIND
    relay: str = Field(max_length=200)
    time: UnixSeconds
    day: int = Field(strict=True, ge=0, description="the local calendar day (an ordinal)")
    counts: list[UsageCount] = Field(default_factory=list, max_length=MAX_USAGE_COUNTS)


def encode_usage(record: WarmupUsage) -> bytes:
    return record.model_dump_json(exclude_none=True).encode()


EventsValue = Event | IPUnpaused | WarmupUsage | SiteAction


def decode_events_value(data: bytes) -> EventsValue:
    """A value of a pool's events topic: an Event, an IPUnpaused, a WarmupUsage or
    a SiteAction (`contracts.site_actions`); WireError otherwise."""
    if SITE_ACTION_MARKER in data:
        return decode_site_action(data)
    if _USAGE_MARKER in data:
        try:
            return WarmupUsage.model_validate_json(data)
        except (ValidationError, ValueError, RecursionError) as exc:
            raise WireError(f"bad {USAGE_KIND} record: {str(exc)[:200]}") from exc
    if _UNPAUSED_MARKER not in data:
        return decode_event(data)
    try:
        return IPUnpaused.model_validate_json(data)
    except (ValidationError, ValueError, RecursionError) as exc:
        raise WireError(f"bad {UNPAUSED_KIND} record: {str(exc)[:200]}") from exc


@dataclass
class IPState:
    egress: EgressIP
    days_sent: set[int] = field(default_factory=set)  # proleptic ordinals, local tz
    sent: Counter[tuple[int, str]] = field(default_factory=Counter)  # (day, site|ALL), pool-wide
    own: Counter[tuple[int, str]] = field(default_factory=Counter)  # this replica's share of it
    # Other replicas' sends as their events said (relay, day, key), and as their
    # last WarmupUsage said: the difference is what they have in flight.
    seen: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    reported: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    attempts: int = 0
    bounces: int = 0
    complaints: int = 0
    paused_reason: str | None = None
    paused_at: float | None = None  # time of the event that paused it (None: a live outcome)
    unpaused_at: float | None = None  # outcomes of events up to this time are not judged again


@dataclass(frozen=True)
class IPReport:
    """What the operator shows per IP in the pool's status."""

    address: str
    warming: bool
    warmup_day: int
    cap_today: int | None
    sent_today: int
    paused_reason: str | None
    paused_at: float | None = None


class WarmupLedger:
    def __init__(self, config: RelayConfig, relay_id: str) -> None:
        self.relay_id = relay_id
        self._ips: dict[str, IPState] = {}
        self._rr = itertools.count()
        self.share = 1.0
        self.settling = False
        self.released = asyncio.Event()  # set while not settling: what attempts wait on
        self.released.set()
        self.reconfigure(config)

    def set_share(self, share: float) -> None:
        """Fraction of the pool's partitions this replica owns (0..1)."""
        self.share = min(max(share, 0.0), 1.0)

    def hold(self) -> None:
        """A rebalance ended: no capped sends until `release`, which comes once the
        events topic was read past it (the others' `WarmupUsage` written when it
        started). Without it, a relay that took over partitions spent the share
        the previous owner had already spent on attempts still in flight."""
        self.settling = True
        self.released.clear()

    def release(self) -> None:
        self.settling = False
        self.released.set()

    def reconfigure(self, config: RelayConfig) -> None:
        self.config = config
        self._capped = frozenset(k for step in config.warmup.schedule for k in step.group_limits)
        # Groups some of whose domains are sites of their own (a throttle override):
        # their sends count under the group from other partitions too, so no one
        # relay owns the group's cap and each spends its share of it.
        self._split_groups = frozenset(
            g for d in config.throttles if "." in d and (g := config.group_of(d)) is not None
        )
        self._tz = ZoneInfo(config.warmup.timezone)
        self._day: tuple[float, float, int] = (0.0, 0.0, 0)  # [start, end) -> day, see day_of
        old = self._ips
        self._ips = {}
        for egress in config.egress:
            state = old.get(egress.address) or IPState(egress)
            state.egress = egress
            self._ips[egress.address] = state

    def day_of(self, now: float) -> int:
        """The local calendar day of `now` (an ordinal). Asked several times per
        message, so the current day's [start, end) is kept and reused."""
        start, end, ordinal = self._day
        if start <= now < end:
            return ordinal
        local = dt.datetime.fromtimestamp(now, self._tz)
        midnight = dt.datetime.combine(local.date(), dt.time(), self._tz).timestamp()
        self._day = (min(midnight, now), self.next_day_start(now), local.date().toordinal())
        return self._day[2]

    def next_day_start(self, now: float) -> float:
        local = dt.datetime.fromtimestamp(now, self._tz)
        tomorrow = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), self._tz)
        return tomorrow.timestamp()

    def warmup_day(self, ip: str, now: float) -> int:
        state = self._ips[ip]
        today = self.day_of(now)
        earlier = sum(1 for d in state.days_sent if d < today)
        return 1 + earlier + state.egress.warmup_day_offset

    def _step_caps(self, ip: str, now: float) -> tuple[int, Mapping[str, int]] | None:
        """(total cap, caps per site) of `ip` today; None = no cap."""
        state = self._ips[ip]
        if not state.egress.warmup:
            return None
        step = self.config.warmup.step_for(self.warmup_day(ip, now))
        if step is None:
            # Before the first step there is no sending allowed; past the last, fully warm.
            schedule = self.config.warmup.schedule
            if schedule and self.warmup_day(ip, now) < schedule[0].day:
                return 0, {}
            return None
        return step.daily_limit, step.group_limits

    def _targets(self, domain: str, site: str | None) -> tuple[tuple[str, bool], ...]:
        """The keys besides ALL a send to `domain` (delivered for `site`; None: the
        site the config names) counts under, each with whether one replica owns
        all of its sends: its site's (the partition's owner), and its group's when
        the domain is a site of its own (the group's domains are then on several
        partitions, so no relay owns the group's cap, `_split_groups`). A site no
        step caps and that is no group is not counted."""
        groups = self.config.domain_groups
        site = site if site is not None else self.config.site_of(domain)
        out: list[tuple[str, bool]] = []
        if site in self._capped or site in groups:
            out.append((site, site not in self._split_groups))
        group = self.config.group_of(domain)
        if group is not None and group != site:
            out.append((group, False))
        return tuple(out)

    def remaining(
        self, ip: str, domain: str | None, now: float, site: str | None = None
    ) -> int | None:
        """Messages `ip` may still send today to `domain` (delivered for `site`;
        None: the site the config names), or in total if `domain` is None; None
        = unlimited. A cap one relay owns (its site's) is this relay's whole;
        the others, its share."""
        targets = self._targets(domain, site) if domain is not None else ()
        return self._left(ip, targets, now)

    def _left(self, ip: str, targets: tuple[tuple[str, bool], ...], now: float) -> int | None:
        caps = self._step_caps(ip, now)
        if caps is None:
            return None
        if self.settling:
            return 0
        total, per_site = caps
        limits = [(total, ALL, False)]
        limits += [(per_site[k], k, owned) for k, owned in targets if k in per_site]
        state = self._ips[ip]
        today = self.day_of(now)
        left: list[int] = []
        for cap, key, owned in limits:
            left.append(cap - state.sent[(today, key)] - _in_flight_elsewhere(state, today, key))
            if not owned:
                left.append(int(cap * self.share) - state.own[(today, key)])
        return max(0, min(left))

    def choose(
        self,
        domain: str,
        count: int,
        now: float,
        excluded: frozenset[str] = frozenset(),
        site: str | None = None,
    ) -> str | None:
        """An egress IP that may send `count` more messages to `domain` (delivered
        for `site`; None: the site the config names) now, or None.

        Warming IPs with budget go first, so each gets its day's volume; the rest
        goes round-robin over IPs without a cap. Paused IPs are never chosen.
        """
        targets = self._targets(domain, site)
        warming: list[str] = []
        warm: list[str] = []
        for ip, state in self._ips.items():
            if ip in excluded or state.paused_reason is not None:
                continue
            left = self._left(ip, targets, now)
            if left is None:
                warm.append(ip)
            elif left >= count:
                warming.append(ip)
        if warming:
            return warming[0]
        if warm:
            return warm[next(self._rr) % len(warm)]
        return None

    def record(self, ip: str, domain: str, count: int, now: float, site: str | None = None) -> None:
        """Count `count` messages sent from `ip` (this relay's own sends)."""
        self._count(ip, self._targets(domain, site), count, now, own=True)

    def unrecord(
        self, ip: str, domain: str, count: int, now: float, site: str | None = None
    ) -> None:
        """Take back `count` messages `record` counted that never reached a MAIL
        FROM (the relay counts before the attempt, so two attempts cannot both
        take an IP's last message): what did not arrive is not sent. A day
        whose only sends are taken back is not a day the IP sent."""
        state = self._ips.get(ip)
        if state is None:
            return
        today = self.day_of(now)
        for key in (ALL, *(k for k, _ in self._targets(domain, site))):
            state.sent[(today, key)] = max(0, state.sent[(today, key)] - count)
            state.own[(today, key)] = max(0, state.own[(today, key)] - count)
        if state.sent[(today, ALL)] == 0:
            state.days_sent.discard(today)

    def _count(
        self,
        ip: str,
        targets: tuple[tuple[str, bool], ...],
        count: int,
        now: float,
        own: bool,
        relay: str = "",
    ) -> None:
        state = self._ips.get(ip)
        if state is None:
            return
        today = self.day_of(now)
        state.days_sent.add(today)
        for key in (ALL, *(k for k, _ in targets)):
            state.sent[(today, key)] += count
            if own:
                state.own[(today, key)] += count
            else:
                state.seen[(relay, today, key)] += count

    def usage(self, now: float) -> WarmupUsage:
        """This relay's counts against today's caps of its warming IPs, attempts
        in flight included: what a relay taking over partitions cannot see yet."""
        today = self.day_of(now)
        counts = [
            UsageCount(ip=ip, key=key, n=n)
            for ip, state in self._ips.items()
            if state.egress.warmup
            for (day, key), n in state.own.items()
            if day == today and n > 0
        ]
        return WarmupUsage(relay=self.relay_id, time=now, day=today, counts=counts)

    def outcome(self, ip: str, disposition: Disposition, at: float | None = None) -> None:
        """Track bounce and complaint rates; pause a warming IP above the thresholds.

        `at` is the event's time when replayed: an outcome from before the IP's
        last un-pause was already judged, so it is not counted again."""
        state = self._ips.get(ip)
        if state is None:
            return
        if at is not None and state.unpaused_at is not None and at <= state.unpaused_at:
            return
        if disposition in _COUNTED:
            state.attempts += 1
        if disposition is Disposition.BOUNCED:
            state.bounces += 1
        if disposition is Disposition.COMPLAINED:
            state.complaints += 1
        settings = self.config.warmup
        if not state.egress.warmup or state.attempts < settings.min_sample:
            return
        bounce_rate = state.bounces / state.attempts
        complaint_rate = state.complaints / state.attempts
        was_paused = state.paused_reason is not None
        if bounce_rate > settings.bounce_rate_pause:
            state.paused_reason = (
                f"bounce rate {bounce_rate:.1%} over {settings.bounce_rate_pause:.1%}"
            )
        elif complaint_rate > settings.complaint_rate_pause:
            state.paused_reason = (
                f"complaint rate {complaint_rate:.2%} over {settings.complaint_rate_pause:.2%}"
            )
        if state.paused_reason is not None and not was_paused:
            state.paused_at = at

    def unpause(self, ip: str, at: float) -> bool:
        """Lift `ip`'s rate pause and start its rate sample afresh; True if it was paused.

        Idempotent and order-proof: replaying the same lift twice, or an older
        lift after a newer one, changes nothing."""
        state = self._ips.get(ip)
        if state is None or (state.unpaused_at is not None and at <= state.unpaused_at):
            return False
        was_paused = state.paused_reason is not None
        state.unpaused_at = at
        state.attempts = state.bounces = state.complaints = 0
        state.paused_reason = None
        state.paused_at = None
        return was_paused

    def observe(self, event: EventsValue, replaying: bool) -> None:
        """Count an event from the events topic: all of them while replaying at
        start, afterwards only those of other replicas (ours were counted live).
        An un-pause applies whoever wrote it; a site action is not the ledger's."""
        if isinstance(event, SiteAction):
            return
        if isinstance(event, IPUnpaused):
            self.unpause(event.egress_ip, event.time)
            return
        if isinstance(event, WarmupUsage):
            if event.relay != self.relay_id:
                for c in event.counts:
                    state = self._ips.get(c.ip)
                    if state is not None:
                        slot = (event.relay, event.day, c.key)
                        state.reported[slot] = max(state.reported[slot], c.n)
            return
        if event.egress_ip is None:
            return
        if replaying or event.relay != self.relay_id:
            if event.disposition in _COUNTED:
                own = event.relay == self.relay_id
                targets = self._targets(event.domain, event.site)
                self._count(event.egress_ip, targets, 1, event.time, own, event.relay or "")
            self.outcome(event.egress_ip, event.disposition, event.time)

    def budgets(self, now: float) -> dict[str, int | None]:
        """Per IP, the messages this replica may still send today in total (None =
        no cap): `mailpipe_warmup_budget_remaining`. Read by the metrics server's
        thread, so an IP removed by a concurrent reload is skipped, not an error."""
        out: dict[str, int | None] = {}
        for ip in list(self._ips):
            try:
                out[ip] = self.remaining(ip, None, now)
            except KeyError:
                continue
        return out

    def paused(self) -> dict[str, str]:
        return {ip: s.paused_reason for ip, s in self._ips.items() if s.paused_reason}

    def report(self, now: float) -> list[IPReport]:
        today = self.day_of(now)
        out = []
        for ip, state in self._ips.items():
            caps = self._step_caps(ip, now)
            cap = caps[0] if caps is not None else None
            out.append(
                IPReport(
                    address=ip,
                    warming=state.egress.warmup,
                    warmup_day=self.warmup_day(ip, now),
                    cap_today=cap,
                    sent_today=state.sent[(today, ALL)],
                    paused_reason=state.paused_reason,
                    paused_at=state.paused_at,
                )
            )
        return out


def _in_flight_elsewhere(state: IPState, day: int, key: str) -> int:
    """What other relays reported counting (`WarmupUsage`) beyond what their
    events have shown since: their attempts still in flight."""
    return sum(
        max(0, n - state.seen[(relay, d, k)])
        for (relay, d, k), n in state.reported.items()
        if d == day and k == key
    )
