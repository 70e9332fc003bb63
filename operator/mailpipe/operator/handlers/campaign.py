"""Campaign handlers besides the fan-out: status from events, suspend, cancel.

A timer turns the pool's events topic (via the tally in the operator memo)
and the fan-out checkpoint into counts, progress and the phase. Suspending,
resuming or deleting a campaign is told to the pool's relays on the compacted
control topic, so records already on Kafka are held or dropped too.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import kopf
from kafka.errors import KafkaError
from pydantic import ValidationError

from mailpipe.contracts.wire import CampaignControl, CampaignState, encode

from .. import kafka_io
from ..models import GROUP, VERSION
from ..progress import CampaignPhase, FanoutCheckpoint, campaign_phase
from .context import DELETE_GIVE_UP_SECONDS, OperatorState, get_pool, operator_state
from .status import condition, merge_conditions, now_iso

STATUS_INTERVAL_SECONDS = 3.0  # counts are patched at most this often
STATUS_IDLE_SECONDS = 1  # a campaign's first report waits until creation has settled
EVENTS_FOLLOWED = "pool_events_followed"  # per-campaign memo flag: the tally is fed


@kopf.timer(GROUP, VERSION, "campaigns", interval=STATUS_INTERVAL_SECONDS, idle=STATUS_IDLE_SECONDS)
async def campaign_status(
    name: str,
    namespace: str | None,
    spec: Any,
    status: Any,
    body: Any,
    patch: Any,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    assert namespace is not None  # both kinds are namespaced
    state = operator_state(memo)
    key = f"{namespace}/{name}"
    if not memo.get(EVENTS_FOLLOWED):
        # A finished fan-out's daemon returns at once after a restart, without
        # following the pool's events: follow them here, or counts stay zero.
        pool = await asyncio.to_thread(get_pool, namespace, spec.get("poolRef", ""))
        if pool is not None:
            state.hub.follow(pool.bootstrap, pool.topics.events, state.tally.observe)
            memo[EVENTS_FOLLOWED] = True
    fanout = FanoutCheckpoint.from_status(status)
    counts = state.tally.counts(key)
    counts["suppressed"] += fanout.suppressed_before_send
    counts["total"] = fanout.total
    counts["enqueued"] = fanout.enqueued
    audience = status.get("audience") or {}  # written by the fan-out's audience check
    counts["deduplicated"] = int(audience.get("deduplicated", 0))
    counts["skipped"] = int(audience.get("skipped", 0))
    finished = state.tally.finished(key)
    phase, reason = campaign_phase(fanout, dict(spec), finished, time.time())
    total = fanout.total
    done = finished + fanout.suppressed_before_send
    progress = f"{(100 * done // total) if total else 0}%"
    new: dict[str, Any] = {"counts": counts, "progress": progress, "phase": phase.value}
    if phase != status.get("phase"):
        kopf.info(body, reason=phase.value, message=reason)
        generation = body.get("metadata", {}).get("generation")
        failed = phase is CampaignPhase.FAILED
        new["conditions"] = merge_conditions(
            list(status.get("conditions", [])),
            [
                condition(
                    "Completed",
                    phase is CampaignPhase.COMPLETED,
                    phase.value,
                    reason,
                    generation,
                ),
                # Failed: why the campaign cannot be sent (FailReason), for
                # `kubectl wait --for=condition=Failed` and dashboards.
                condition(
                    "Failed",
                    failed,
                    (fanout.reason or "FanoutFailed") if failed else phase.value,
                    reason if failed else "",
                    generation,
                ),
            ],
        )
    if fanout.generation is not None:
        # the generation the fan-out last acted on: an edit it did not apply
        # (after a Done fan-out) shows as observedGeneration < generation
        new["observedGeneration"] = fanout.generation
    if fanout.started_at and not status.get("startedAt"):
        new["startedAt"] = fanout.started_at
    if phase is CampaignPhase.COMPLETED and not status.get("completedAt"):
        new["completedAt"] = now_iso()
    for k, v in new.items():
        if status.get(k) != v:
            patch.status[k] = v


def _publish_state(
    state: OperatorState, namespace: str, name: str, pool_name: str, campaign: CampaignState
) -> bool:
    """Tell the pool's relays (compacted control topic) to hold or drop this campaign."""
    pool = get_pool(namespace, pool_name)
    if pool is None:
        return False
    key = f"{namespace}/{name}"
    control = CampaignControl(campaign=key, state=campaign, time=time.time())
    producer = state.producers.get(pool.bootstrap)
    kafka_io.produce_all(producer, pool.topics.control, [(key.encode(), encode(control))])
    return True


@kopf.on.field(GROUP, VERSION, "campaigns", field="spec.suspend")
async def suspend_changed(
    name: str,
    namespace: str | None,
    spec: Any,
    old: Any,
    new: Any,
    body: Any,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    assert namespace is not None  # both kinds are namespaced
    if old is None and not new:
        return  # created unsuspended: nothing to tell the relays
    campaign = CampaignState.PAUSED if new else CampaignState.ACTIVE
    published = await asyncio.to_thread(
        _publish_state, operator_state(memo), namespace, name, spec.get("poolRef", ""), campaign
    )
    if published:
        kopf.info(
            body, reason="Paused" if new else "Resumed", message=f"relays told: {campaign.value}"
        )


# A campaign's deletion never waits forever (ARCHITECTURE.md, invariant 14): a
# Kafka that cannot be reached is retried at this pace until DELETE_GIVE_UP_SECONDS,
# then the campaign goes with a Warning Event saying the relays were not told.
CANCEL_RETRY_SECONDS = 15
CANCEL_FAILURE_MEMO = "cancel_failure"  # per-campaign memo: why the last attempt failed


@kopf.on.delete(GROUP, VERSION, "campaigns")
async def delete_campaign(
    name: str,
    namespace: str | None,
    spec: Any,
    body: Any,
    memo: kopf.Memo,
    runtime: datetime.timedelta,
    **_: Any,
) -> None:
    assert namespace is not None  # both kinds are namespaced
    state = operator_state(memo)
    # Records already on Kafka are dropped by the relays with a `failed` event.
    # An attempt that starts past the give-up time is not made (each one can
    # take the Kafka client's bootstrap timeout): the campaign goes, with a Warning.
    if runtime.total_seconds() >= DELETE_GIVE_UP_SECONDS:
        why = memo.get(CANCEL_FAILURE_MEMO, "no answer from Kafka")
        message = (
            f"relays not told to drop its records: gave up after "
            f"{DELETE_GIVE_UP_SECONDS:.0f}s ({why})"
        )
        kopf.warn(body, reason="CancelNotPublished", message=message)
    else:
        try:
            await asyncio.to_thread(
                _publish_state,
                state,
                namespace,
                name,
                spec.get("poolRef", ""),
                CampaignState.CANCELLED,
            )
        except KafkaError as exc:
            memo[CANCEL_FAILURE_MEMO] = f"{type(exc).__name__}: {str(exc)[:200]}"
            raise kopf.TemporaryError(
                memo[CANCEL_FAILURE_MEMO], delay=CANCEL_RETRY_SECONDS
            ) from exc
        except ValidationError as exc:  # the pool's spec is invalid: no Kafka to tell
            message = f"relays not told to drop its records: pool spec invalid: {str(exc)[:200]}"
            kopf.warn(body, reason="CancelNotPublished", message=message)
    state.tally.forget(f"{namespace}/{name}")
