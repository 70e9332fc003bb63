"""Per-IP warm-up status of each SendingPool, kept apart from the pool's reconcile.

The warm-up ledger of a pool is the relays' own (`mailpipe.contracts.warmup`),
replayed by the operator from the pool's events topic so the status shows each
IP's warm-up day, today's cap and what it sent, exactly as the relays count it.
This module only *reads*: it never writes the pool's children, so it is kept
out of `handlers/pool.py`, whose reconcile is the one writer of the relay
Deployment.

A low-level event handler (no finalizer, no handler progress in the object)
registers each pool's ledger when the pool is listed, created or changed and
drops it when the pool goes; a timer turns the ledger into status.
"""

from __future__ import annotations

import time
from typing import Any

import kopf
from pydantic import ValidationError

from mailpipe.contracts.warmup import WarmupLedger

from ..models import GROUP, VERSION, SendingPoolSpec
from ..pool import PoolRef, build_relay_config, topics
from .context import OperatorState, operator_state, parse_pool_spec

WARMUP_STATUS_INTERVAL_SECONDS = 15.0  # warm-up moves by the day: a slow refresh is plenty
WARMUP_STATUS_IDLE_SECONDS = 5  # let a just-edited pool settle before its first report
WARMUP_LEDGER_RELAY_ID = "operator"  # the ledger only reads events; it never sends as a relay


@kopf.on.event(GROUP, VERSION, "sendingpools")
async def track_pool_warmup(type: str | None, body: Any, memo: kopf.Memo, **_: Any) -> None:
    """Keep one ledger per pool, fed from the pool's events topic."""
    meta = body.get("metadata", {})
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    state = operator_state(memo)
    if type == "DELETED":
        state.ledgers.pop(key, None)
        return
    try:
        spec = parse_pool_spec(body.get("spec", {}))
    except ValidationError:
        return  # reconcile reports the invalid spec; nothing to count yet
    follow_pool_events(state, PoolRef(meta["name"], meta["namespace"], meta["uid"]), spec)


def follow_pool_events(state: OperatorState, ref: PoolRef, spec: SendingPoolSpec) -> None:
    """Count this pool's events into its warm-up ledger and the campaign tally."""
    key = f"{ref.namespace}/{ref.name}"
    cfg = build_relay_config(ref, spec)
    events = topics(ref, spec).events
    ledger = state.ledgers.get(key)
    if ledger is None:
        ledger = state.ledgers[key] = WarmupLedger(cfg, relay_id=WARMUP_LEDGER_RELAY_ID)
        # replaying=True: the operator sends nothing itself, so every event counts
        state.hub.follow(
            spec.kafka.bootstrap_servers, events, lambda e: ledger.observe(e, replaying=True)
        )
    else:
        ledger.reconfigure(cfg)
    state.hub.follow(spec.kafka.bootstrap_servers, events, state.tally.observe)


@kopf.timer(
    GROUP,
    VERSION,
    "sendingpools",
    interval=WARMUP_STATUS_INTERVAL_SECONDS,
    idle=WARMUP_STATUS_IDLE_SECONDS,
)
async def pool_warmup_status(
    name: str, namespace: str | None, status: Any, patch: Any, memo: kopf.Memo, **_: Any
) -> None:
    assert namespace is not None  # both kinds are namespaced
    ledger = operator_state(memo).ledgers.get(f"{namespace}/{name}")
    if ledger is None:
        return
    ips = [
        {
            "address": r.address,
            "warming": r.warming,
            "warmupDay": r.warmup_day,
            "capToday": r.cap_today,
            "sentToday": r.sent_today,
            **({"pausedReason": r.paused_reason} if r.paused_reason else {}),
        }
        for r in ledger.report(time.time())
    ]
    if ips != status.get("ips"):
        patch.status["ips"] = ips
        warming = [i for i in ips if i["warming"]]
        patch.status["warmupSummary"] = (
            ", ".join(
                f"{i['address']} d{i['warmupDay']} {i['sentToday']}/{i['capToday']}"
                for i in warming
            )
            or "warm"
        )
