"""Per-IP warm-up of each SendingPool: status, why an IP paused, and its un-pause.

The warm-up ledger of a pool is the relays' own (`mailpipe.contracts.warmup`),
replayed by the operator from the pool's events topic so the status shows each
IP's warm-up day, today's cap and what it sent, exactly as the relays count it.
It is kept out of `handlers/pool.py`, whose reconcile is the one writer of the
relay Deployment: this module never writes a pool's children.

- A low-level event handler (no finalizer, no handler progress in the object)
  registers each pool's ledger with the operator's one shared events reader
  when the pool is listed, created or changed, and drops it when the pool goes.
  Registering is a dictionary update: no Kafka client, no blocking call.
- One operator-wide task (`status_loop`) turns each ledger into status: `ips`, the WARMUP column
  (`warmupSummary`), and the `WarmupPaused` condition plus a Warning Event
  when an IP pauses for its bounce or complaint rate; and the same events'
  TLS outcomes into the `tls` section (`tls_status`: per site, verified,
  unverified or clear, and the last failure); and the sites its relays hold
  suspended or slowed for an IP (a reply rule's action, `contracts.site_actions`)
  into `siteActions` and the SITES column (`siteActionsSummary`).
- The `mailpipe.io/unpause-ip: <ip>[,<ip>]` annotation makes the operator write
  an `IPUnpaused` record to the pool's events topic (relays and this ledger
  both replay it, so the lift survives restarts), then remove the annotation.
  Only for an IP that is paused: the record restarts the IP's rates, so for
  one that is not it would only wipe their history (refused, with a Warning).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from pydantic import ValidationError

from mailpipe.contracts.site_actions import STATE_OF, SiteAction, SiteActions
from mailpipe.contracts.warmup import (
    UNPAUSE_ANNOTATION,
    IPReport,
    IPUnpaused,
    WarmupLedger,
    encode_unpaused,
)

from .. import kafka_io, kube_io, tenancy
from ..kafka_io import KafkaError
from ..kube_io import ApiException
from ..models import GROUP, VERSION, SendingPoolSpec
from ..pool import PoolRef, build_relay_config, topics
from ..tls_status import TLSTally, status_update
from .context import OperatorState, cancel_task, operator_state, parse_pool_spec
from .status import condition, merge_conditions

log = logging.getLogger("mailpipe.operator.warmup")

WARMUP_STATUS_INTERVAL_SECONDS = 15.0  # warm-up moves by the day: a slow refresh is plenty
WARMUP_STATUS_IDLE_SECONDS = 5  # let a just-edited pool settle before its first report
WARMUP_LEDGER_RELAY_ID = "operator"  # the ledger only reads events; it never sends as a relay
UNPAUSE_RETRY_SECONDS = 15  # a broker that refuses the un-pause record is retried at this pace
PAUSED = "WarmupPaused"
TRACKED_MEMO = "warmup_tracked"  # per-pool memo: (uid, generation) its ledger follows
SUMMARY_ACTIONS = 2  # site actions named in the SITES column; the rest counted


@kopf.on.event(GROUP, VERSION, "sendingpools")
async def track_pool_warmup(type: str | None, body: Any, memo: kopf.Memo, **_: Any) -> None:
    """Keep one ledger per pool, fed by the shared events reader, and the pool as
    last seen for the status loop (`status_loop`)."""
    meta = body.get("metadata", {})
    state = operator_state(memo)
    deleted = type == "DELETED" or bool(meta.get("deletionTimestamp"))
    seen = (meta.get("uid"), meta.get("generation"))
    key = f"{meta['namespace']}/{meta['name']}"
    if deleted:
        state.warmup_views.pop(key, None)
    else:
        view = state.warmup_views.get(key)
        if view is None:
            state.warmup_views[key] = PoolView(dict(body), time.monotonic())
        else:
            view.seen(dict(body), time.monotonic())
        start_status_loop(state)
    if not deleted and key in state.ledgers and memo.get(TRACKED_MEMO) == seen:
        # The same spec as the ledger's (a status or metadata write): nothing to
        # re-parse. A pool gets several such events when it is created, and the
        # spec's parse and the relay config it renders were 5% of the operator's
        # CPU with 1,000 pools created together.
        return
    track(state, meta["namespace"], meta["name"], body, deleted=type == "DELETED")
    memo[TRACKED_MEMO] = seen


def track(
    state: OperatorState, namespace: str, name: str, body: Any, *, deleted: bool = False
) -> None:
    """Follow the pool's events topic, or stop: when it goes, is being deleted
    (its topics are about to be), or its Kafka may not be contacted
    (`tenancy.kafka_refusal`: the cluster policy refuses it, or the topics
    are another namespace's). Called again after a policy change
    (`handlers.policy`), which sends no pool event."""
    meta = body.get("metadata", {})
    try:
        spec = parse_pool_spec(body.get("spec", {}))
    except ValidationError:
        return  # reconcile reports the invalid spec; nothing to count yet
    ref = PoolRef(name, namespace, meta.get("uid", ""))
    refused = tenancy.kafka_refusal(namespace, name, spec.kafka, state.policy)
    if deleted or meta.get("deletionTimestamp") or refused is not None:
        forget_pool(state, ref, spec)
    else:
        # Never reconciled: its first reconcile creates the topics and tells the
        # events reader (`EventsHub.created`), which need not look for them.
        new = (body.get("status") or {}).get("observedGeneration") is None
        follow_pool_events(state, ref, spec, expected=new)


def _key(ref: PoolRef) -> str:
    return f"{ref.namespace}/{ref.name}"


def follow_pool_events(
    state: OperatorState, ref: PoolRef, spec: SendingPoolSpec, *, expected: bool = False
) -> None:
    """Count this pool's events into its warm-up ledger and the campaign tally.
    `expected`: the pool's reconcile will say when its events topic exists."""
    key = _key(ref)
    cfg = build_relay_config(ref, spec)
    source = (spec.kafka.bootstrap_servers, topics(ref, spec).events)
    ledger = state.ledgers.get(key)
    if ledger is not None and state.warmup_sources.get(key) == source:
        ledger.reconfigure(cfg)
        return
    if key in state.warmup_sources:  # the pool moved to another topic or cluster
        state.hub.forget(*state.warmup_sources[key])
    ledger = state.ledgers[key] = WarmupLedger(cfg, relay_id=WARMUP_LEDGER_RELAY_ID)
    state.warmup_sources[key] = source
    actions = state.site_actions[key] = SiteActions()
    # replaying=True: the operator sends nothing itself, so every event counts
    state.hub.follow(
        *source,
        lambda e: ledger.observe(e, replaying=True),
        on_unpause=lambda u: ledger.observe(u, replaying=True),
        on_site_action=actions.apply,
        expected=expected,
    )
    state.hub.follow(*source, state.tally.observe)
    tls = state.tls[key] = TLSTally()
    state.hub.follow(*source, tls.observe)


def forget_pool(state: OperatorState, ref: PoolRef, spec: SendingPoolSpec) -> None:
    key = _key(ref)
    state.warmup_views.pop(key, None)
    state.ledgers.pop(key, None)
    state.tls.pop(key, None)
    state.site_actions.pop(key, None)
    source = state.warmup_sources.pop(key, None)
    if source is not None:  # never followed: nothing to forget, and no name to derive
        state.hub.forget(*source)


def _when(at: float | None) -> str:
    if at is None:
        return ""
    return " at " + dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pause_message(paused: list[IPReport]) -> str:
    """One line: which IPs paused, why, since when, and how to lift it."""
    parts = [f"{r.address} paused: {r.paused_reason}{_when(r.paused_at)}" for r in paused]
    return "; ".join(parts) + f" (annotate the pool {UNPAUSE_ANNOTATION}=<ip> to lift)"


def _utc(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def site_actions_status(actions: list[SiteAction]) -> list[dict[str, Any]]:
    """`status.siteActions`: each site suspended or slowed for an IP, until when,
    after which reply (what the operator reads to know why a site gets nothing)."""
    return [
        {
            "site": a.site,
            "ip": a.egress_ip,
            "action": STATE_OF[a.action].value,
            "until": _utc(a.until),
            "after": a.reply,
            **({"messagesPerMinute": a.messages_per_minute} if a.messages_per_minute else {}),
            **({"relay": a.relay} if a.relay else {}),
        }
        for a in actions
    ]


def site_actions_summary(actions: list[SiteAction]) -> str:
    """The SITES printer column: `gmail.com suspended on 203.0.113.5 until 14:20Z`,
    or "" when no site is held back."""
    parts = [
        f"{a.site} {STATE_OF[a.action]} on {a.egress_ip} until "
        + dt.datetime.fromtimestamp(a.until, dt.UTC).strftime("%H:%MZ")
        for a in actions
    ]
    if len(parts) > SUMMARY_ACTIONS:
        parts = [*parts[:SUMMARY_ACTIONS], f"+{len(parts) - SUMMARY_ACTIONS} more"]
    return ", ".join(parts)


def warmup_summary(reports: list[IPReport]) -> str:
    """The WARMUP printer column: warming IPs' day and budget, and any pause.

    The budget counts recipients tried today (delivered, bounced and deferred
    alike: each one spends the IP's reputation), so the column says "tried":
    a bare "100/100" beside 94 delivered read as a miscount."""
    parts = []
    for r in reports:
        if r.paused_reason:
            parts.append(f"{r.address} PAUSED ({r.paused_reason})")
        elif r.warming:
            parts.append(f"{r.address} d{r.warmup_day} {r.sent_today}/{r.cap_today} tried")
    return ", ".join(parts) or "warm"


def ips_status(reports: list[IPReport]) -> list[dict[str, Any]]:
    """`status.ips`: each egress IP's warm-up as the ledger counts it."""
    # No None values: the API server drops them, so the next comparison with
    # the stored status would differ and every pool be patched every tick.
    return [
        {
            "address": r.address,
            "warming": r.warming,
            "warmupDay": r.warmup_day,
            "sentToday": r.sent_today,
            **({"capToday": r.cap_today} if r.cap_today is not None else {}),
            **({"pausedReason": r.paused_reason} if r.paused_reason else {}),
        }
        for r in reports
    ]


def first_report(ledger: WarmupLedger | None, now: float) -> dict[str, Any] | None:
    """`ips` and `warmupSummary` for a pool's first reconcile to write with its
    status, so the status loop finds nothing to write for a new pool (one
    status write and one watch event fewer per pool). None without a ledger,
    or when an IP is paused: the status loop reports a pause, with its Warning Event."""
    if ledger is None:
        return None
    reports = ledger.report(now)
    if any(r.paused_reason for r in reports):
        return None
    return {"ips": ips_status(reports), "warmupSummary": warmup_summary(reports)}


@dataclass
class PoolView:
    """A pool as its last watch event showed it, for the status loop: the loop
    holds no kopf handler, so it compares with what the events brought."""

    body: dict[str, Any]
    changed_at: float  # monotonic time of its last event
    reported_at: float | None = None  # monotonic time the loop last looked at it

    def seen(self, body: dict[str, Any], now: float) -> None:
        self.body, self.changed_at = body, now

    def due(self, now: float) -> bool:
        """Idle long enough since its last change, and its turn again."""
        if now - self.changed_at < WARMUP_STATUS_IDLE_SECONDS:
            return False
        return self.reported_at is None or now - self.reported_at >= WARMUP_STATUS_INTERVAL_SECONDS


@dataclass
class Report:
    """What one look at a pool writes: `fields` merged into its status; `conditions`
    (the whole list) written with them only if the pool is unchanged since it was
    read; `warning` a Warning Event's message (IPs newly paused)."""

    fields: dict[str, Any] = field(default_factory=dict)
    conditions: list[dict[str, Any]] | None = None
    warning: str | None = None


def report(state: OperatorState, key: str, body: Mapping[str, Any], now: float) -> Report:
    """The pool's warm-up, TLS and site-action status from its ledger and tallies,
    compared with its `body`'s status: only what changed."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    out = Report()
    ledger = state.ledgers.get(key)
    if ledger is None or status.get("observedGeneration") is None:
        # Not reconciled yet: when hundreds of pools are created at once, a
        # status write now would only add to the API server's queue ahead of
        # the reconciles, with nothing counted to report.
        return out
    reports = ledger.report(now)
    ips = ips_status(reports)
    summary = warmup_summary(reports)
    # The summary too: the pool's reconcile writes a first one ("1 warming").
    if ips != status.get("ips") or summary != status.get("warmupSummary"):
        out.fields.update({"ips": ips, "warmupSummary": summary})
    table = state.site_actions.get(key)
    active = table.active(now) if table is not None else []
    site_actions = site_actions_status(active)
    if site_actions != (status.get("siteActions") or []):
        # [] rather than None: a merge patch's None would delete the field, and an
        # absent list reads back the same as an empty one above
        out.fields["siteActions"] = site_actions
        out.fields["siteActionsSummary"] = site_actions_summary(active)
    tls = status_update(state.tls.get(key), status.get("tls"))
    if tls is not None:
        out.fields["tls"] = tls
    was_paused = {i["address"] for i in status.get("ips") or [] if i.get("pausedReason")}
    paused = [r for r in reports if r.paused_reason]
    newly = [r for r in paused if r.address not in was_paused]
    if newly:
        out.warning = pause_message(newly)
    old = list(status.get("conditions") or [])
    previous = next((c for c in old if c.get("type") == PAUSED), None)
    if paused:
        new = condition(
            PAUSED, True, "RateOverLimit", pause_message(paused), meta.get("generation")
        )
    elif previous is not None and previous.get("status") == "True":
        new = condition(PAUSED, False, "NoIPPaused", "", meta.get("generation"))
    else:
        return out  # never paused (or already said so): no condition to write
    if previous is None or any(previous.get(k) != new[k] for k in ("status", "message")):
        out.conditions = merge_conditions(old, [new])  # the other types as they are
    return out


def _write(kube: kube_io.Kube, body: Mapping[str, Any], out: Report) -> None:
    """Write `out` (blocking). With the condition, the IPs and the summary in the
    same write: a reader who sees the condition change sees the WARMUP column
    change with it. A stale conditional write leaves the condition to the next
    look, from a fresher status, and merges the other fields as they are."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if out.conditions is not None and write_conditions(
        kube, namespace, name, meta.get("resourceVersion"), out.conditions, out.fields
    ):
        return
    if out.fields:
        kube.patch_status("sendingpools", namespace, name, out.fields)


async def report_pool(state: OperatorState, key: str, view: PoolView, now: float) -> Report:
    """Look at one pool: post its Warning, write what changed, and remember it as
    written so the next look compares with it (its watch event comes later)."""
    out = report(state, key, view.body, now)
    if out.warning is not None:
        kopf.warn(kopf.Body(cast(kopf.RawBody, view.body)), reason="IPPaused", message=out.warning)
    if out.fields or out.conditions is not None:
        await asyncio.to_thread(_write, state.kube, view.body, out)
        status = dict(view.body.get("status") or {})
        status.update(out.fields)
        if out.conditions is not None:
            status["conditions"] = out.conditions
        view.body = {**view.body, "status": status}
    return out


# How often the loop looks for pools due: a small share of the interval, and a
# walk of 1,000 views is a fraction of a millisecond.
STATUS_SCAN_SECONDS = 1.0
STATUS_YIELD_EVERY = 50  # pools looked at between two turns of the event loop


async def status_loop(state: OperatorState, clock: Callable[[], float] = time.monotonic) -> None:
    """Report every pool's warm-up, TLS and site actions in its status for ever:
    one operator-wide task, not a kopf timer per pool (1,000 pools ticking every
    15 s were a handler call and a log line each, 67 a second, whether or not
    anything changed). Each pool is looked at once it has been unchanged for
    `WARMUP_STATUS_IDLE_SECONDS`, then every `WARMUP_STATUS_INTERVAL_SECONDS`;
    a pool whose write fails is looked at again at its next turn."""
    while True:
        now = clock()
        due: list[tuple[str, PoolView]] = [
            (k, v) for k, v in state.warmup_views.items() if v.due(now)
        ]
        for i, (key, view) in enumerate(due, 1):
            if state.warmup_views.get(key) is not view:
                continue  # gone meanwhile
            view.reported_at = now
            try:
                await report_pool(state, key, view, time.time())
            except Exception as exc:  # an API error: this pool's next turn, not the end
                log.warning("pool %s: warm-up status not written: %r", key, exc)
            if i % STATUS_YIELD_EVERY == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(STATUS_SCAN_SECONDS)


def start_status_loop(state: OperatorState) -> None:
    """Start the status loop once (from a pool handler: kopf posts Events only
    from tasks started within a resource's own, see `handlers.policy`)."""
    if state.warmup_task is None:
        state.warmup_task = asyncio.get_running_loop().create_task(
            status_loop(state), name="warmup-status"
        )


async def stop_status_loop(state: OperatorState) -> None:
    task, state.warmup_task = state.warmup_task, None
    await cancel_task(task)


def split_unpause(
    requested: list[str], ledger_paused: Mapping[str, str], status_ips: Any
) -> tuple[list[str], list[str]]:
    """(paused, not paused) of the `requested` IPs. Paused by the ledger or by
    the status it last wrote: after an operator restart the ledger may still be
    replaying the events topic while the status already says why an IP paused."""
    reported = {str(i.get("address")) for i in status_ips or [] if i.get("pausedReason")}
    paused = set(ledger_paused) | reported
    return [ip for ip in requested if ip in paused], [ip for ip in requested if ip not in paused]


def write_conditions(
    kube: kube_io.Kube,
    namespace: str,
    name: str,
    resource_version: str | None,
    conditions: list[dict[str, Any]],
    fields: Mapping[str, Any] | None = None,
) -> bool:
    """Replace the pool's conditions (and `fields` of its status, in the same write) only if
    the pool is unchanged since `resource_version`.

    The reconcile writes the whole `conditions` list too (a merge patch replaces
    a list whole): an unconditional write of a list read moments ago would wipe
    a Ready it just set. A stale write fails here and is retried at the next
    tick from a fresher status. Blocking."""
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
        {"op": "add", "path": "/status/conditions", "value": conditions},
        *({"op": "add", "path": f"/status/{k}", "value": v} for k, v in (fields or {}).items()),
    ]
    try:
        kube.json_patch_status("sendingpools", namespace, name, ops)
    except ApiException as exc:
        log.debug("conditions of %s/%s not written (%s); next tick", namespace, name, exc.status)
        return False
    return True


@kopf.on.create(GROUP, VERSION, "sendingpools", annotations={UNPAUSE_ANNOTATION: kopf.PRESENT})
@kopf.on.update(GROUP, VERSION, "sendingpools", annotations={UNPAUSE_ANNOTATION: kopf.PRESENT})
@kopf.on.resume(GROUP, VERSION, "sendingpools", annotations={UNPAUSE_ANNOTATION: kopf.PRESENT})
async def unpause_ip(
    name: str,
    namespace: str | None,
    uid: str,
    spec: Any,
    status: Any,
    annotations: Any,
    body: Any,
    patch: Any,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Write an `IPUnpaused` record for each annotated IP that is paused, then
    remove the annotation. An IP that is not paused is refused with a Warning:
    the record would start its bounce and complaint rates afresh, wiping the
    history a pause is judged on, and lift nothing."""
    assert namespace is not None  # both kinds are namespaced
    ips = [ip.strip() for ip in str(annotations[UNPAUSE_ANNOTATION]).split(",") if ip.strip()]
    try:
        parsed = parse_pool_spec(spec)
    except ValidationError as exc:
        raise kopf.PermanentError("the pool's spec is invalid; see its Ready condition") from exc
    known = {e.address for e in parsed.egress_ips}
    unknown = [ip for ip in ips if ip not in known]
    if unknown or not ips:
        patch.metadata.annotations[UNPAUSE_ANNOTATION] = None  # refused once, not retried
        what = ", ".join(unknown) or "no IP"
        message = f"{UNPAUSE_ANNOTATION}: {what} is not an egress IP of this pool"
        kopf.warn(body, reason="UnpauseRefused", message=message)
        return
    state = operator_state(memo)
    ledger = state.ledgers.get(f"{namespace}/{name}")
    lift, not_paused = split_unpause(
        ips, ledger.paused() if ledger is not None else {}, status.get("ips")
    )
    if not_paused:
        message = (
            f"{UNPAUSE_ANNOTATION}: {', '.join(not_paused)} not paused: nothing to lift "
            "(bounce and complaint rates kept)"
        )
        kopf.warn(body, reason="UnpauseRefused", message=message)
    if not lift:
        patch.metadata.annotations[UNPAUSE_ANNOTATION] = None  # refused once, not retried
        return
    ips = lift
    now = time.time()
    bootstrap = parsed.kafka.bootstrap_servers
    events = topics(PoolRef(name, namespace, uid), parsed).events
    try:
        producer = await asyncio.to_thread(state.producers.get, bootstrap)
        for ip in ips:
            record = IPUnpaused(egress_ip=ip, time=now, by=UNPAUSE_ANNOTATION)
            # On every partition: see `mailpipe.contracts.warmup` (order-proof replay).
            await asyncio.to_thread(
                kafka_io.produce_to_every_partition,
                producer,
                events,
                ip.encode(),
                encode_unpaused(record),
            )
    except KafkaError as exc:
        message = (
            f"cannot write the un-pause of {', '.join(ips)} to {bootstrap}: {type(exc).__name__}"
        )
        kopf.warn(body, reason="KafkaUnavailable", message=message)
        raise kopf.TemporaryError(message, delay=UNPAUSE_RETRY_SECONDS) from exc
    patch.metadata.annotations[UNPAUSE_ANNOTATION] = None  # written: remove it only now
    kopf.info(
        body,
        reason="IPUnpaused",
        message=f"{', '.join(ips)} un-paused: bounce and complaint rates start afresh",
    )
