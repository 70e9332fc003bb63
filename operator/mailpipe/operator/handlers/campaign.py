"""Campaign handlers besides the fan-out: status from events, suspend, cancel, edits.

A timer turns the pool's events topic (via the tally in the operator memo)
and the fan-out checkpoint into counts, progress and the phase. Suspending,
resuming or deleting a campaign is told to the pool's relays on the compacted
control topic, so records already on Kafka are held or dropped too. An edit
after fan-out started is accepted or refused field by field (`accept_spec`,
rules in `validation`); the conditions are kstatus-readable (Ready,
Reconciling, Stalled, with observedGeneration).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import kopf

from mailpipe.contracts.wire import CampaignControl, CampaignState, Disposition, encode

from .. import kafka_io, kube_io
from ..complaints import Level, judge, rate_text
from ..kafka_io import KafkaError
from ..models import GROUP, VERSION, ComplaintSettings
from ..progress import (
    CampaignPhase,
    FanoutCheckpoint,
    FanoutState,
    audience_configmap,
    audience_fix_pending,
    campaign_phase,
)
from ..validation import (
    EDIT_REFUSED,
    edit_refused_message,
    frozen_digests,
    refused_edits,
)
from .context import OperatorState, get_pool, operator_state, pool_readiness, pool_waiting
from .status import campaign_conditions, condition, merge_conditions, now_iso

STATUS_INTERVAL_SECONDS = 3.0  # counts are patched at most this often
STATUS_IDLE_SECONDS = 1  # a campaign's first report waits until creation has settled
EVENTS_FOLLOWED = "pool_events_followed"  # per-campaign memo flag: the tally is fed
SPEC_ACCEPTED = "SpecAccepted"  # condition: the latest spec is what the operator acts on
COMPLAINT_RATE_HIGH = "ComplaintRateHigh"  # condition: complaints over the warning level
COMPLAINT_PAUSE = "ComplaintRateExceeded"  # Event reason (Warning) when complaints pause it

# status fields counting recipients per bounce class, by their latest disposition
BY_CLASS_FIELDS = (
    (Disposition.BOUNCED, "bouncedByClass"),
    (Disposition.DEFERRED, "deferredByClass"),
)


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
        pool = await asyncio.to_thread(get_pool, state.kube, namespace, spec.get("poolRef", ""))
        if pool is not None and pool.kafka_refusal(state.policy) is None:
            state.hub.follow(pool.bootstrap, pool.topics.events, state.tally.observe)
            memo[EVENTS_FOLLOWED] = True
    fanout = FanoutCheckpoint.from_status(status)
    rearmed = await _rearm_if_audience_fixed(state.kube, namespace, dict(spec), fanout, body)
    if rearmed is not None:
        patch.status["fanout"] = rearmed.patch()
        fanout = FanoutCheckpoint.from_status({"fanout": fanout.patch() | rearmed.patch()})
    counts = state.tally.counts(key)
    counts["suppressed"] += fanout.suppressed_before_send
    counts["total"] = fanout.total
    counts["enqueued"] = fanout.enqueued
    audience = status.get("audience") or {}  # written by the fan-out's audience check
    counts["deduplicated"] = int(audience.get("deduplicated", 0))
    counts["skipped"] = int(audience.get("skipped", 0))
    finished = state.tally.finished(key)
    complaints, complaint_condition = _complaints(spec, status, counts, body, patch)
    phase, reason = campaign_phase(fanout, dict(spec), finished, time.time())
    if phase is CampaignPhase.SENDING:
        reason = await _with_pool_trouble(state, namespace, str(spec.get("poolRef", "")), reason)
    if phase is CampaignPhase.PAUSED and complaints.get("paused"):
        reason = complaint_condition["message"]
    total = fanout.total
    done = finished + fanout.suppressed_before_send
    progress = f"{(100 * done // total) if total else 0}%"
    new: dict[str, Any] = {
        "counts": counts,
        "progress": progress,
        "phase": phase.value,
        "complaints": complaints,
    }
    variants = state.tally.variants(key)
    old_variants = status.get("variants") or {}
    for variant, per in variants.items():
        old = (old_variants.get(variant) or {}).get("bouncedByClass") or {}
        per["bouncedByClass"] = {**dict.fromkeys(old), **per["bouncedByClass"]}
    if variants:
        new["variants"] = variants
    for disposition, field_name in BY_CLASS_FIELDS:
        by_class = state.tally.by_class(key, disposition)
        old = status.get(field_name) or {}
        if by_class or old:
            # merge patch: a class no longer counted is removed with a null
            new[field_name] = {**dict.fromkeys(old), **by_class}
    generation = body.get("metadata", {}).get("generation")
    failed = phase is CampaignPhase.FAILED
    conditions = list(status.get("conditions", []))
    refused = status.get("refusedEdit")  # written by accept_spec; conditions are written here
    stalled = None
    if refused:
        stalled = (EDIT_REFUSED, str(refused.get("message", "")))
    elif failed:
        stalled = (fanout.reason or "FanoutFailed", reason)
    accepted = (
        condition(SPEC_ACCEPTED, False, EDIT_REFUSED, stalled[1], generation)
        if refused and stalled
        else condition(SPEC_ACCEPTED, True, "Accepted", "", generation)
    )
    kstatus = campaign_conditions(generation, phase.value, reason, stalled)
    merged = merge_conditions(conditions, [*kstatus, accepted, complaint_condition])
    if phase != status.get("phase"):
        kopf.info(body, reason=phase.value, message=reason)
        merged = merge_conditions(
            merged,
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
    new["conditions"] = merged
    if fanout.started_at and not status.get("startedAt"):
        new["startedAt"] = fanout.started_at
    if phase is CampaignPhase.COMPLETED and not status.get("completedAt"):
        new["completedAt"] = now_iso()
    for k, v in new.items():
        if status.get(k) != v:
            patch.status[k] = v


async def _with_pool_trouble(
    state: OperatorState, namespace: str, pool_name: str, reason: str
) -> str:
    """`reason` of a Sending campaign, and the pool's words when it is not Ready.

    Its records wait on Kafka while the pool has no relay to read them (a
    cluster policy that now refuses the pool scales its relays to 0; relays in
    a crash loop): "waiting for dispositions" alone would say the campaign
    sends when nothing can. One GET of the pool per status tick, and only
    while the campaign is Sending."""
    pool = await asyncio.to_thread(get_pool, state.kube, namespace, pool_name)
    if pool_readiness(pool)[0]:
        return reason
    return f"{reason}; {pool_waiting(pool_name, pool)}"


def _complaints(
    spec: Any, status: Any, counts: dict[str, int], body: Any, patch: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """status.complaints and the ComplaintRateHigh condition; pauses the campaign
    (spec.suspend, as a person would, so the fan-out and the relays hold it) with a
    Warning Event when its complaint rate reaches the threshold (`complaints.judge`)."""
    try:
        settings = ComplaintSettings.model_validate(dict(spec.get("complaints") or {}))
    except ValueError:  # the CRD schema refuses what this refuses; never stop counting
        settings = ComplaintSettings()
    before = dict(status.get("complaints") or {})
    paused_at = before.get("pausedAtComplaints")
    suspended = bool(spec.get("suspend"))
    complained, delivered = counts.get("complained", 0), counts.get("delivered", 0)
    verdict = judge(
        complained, delivered, settings, suspended=suspended, paused_at_complaints=paused_at
    )
    paused = bool(before.get("paused")) and suspended  # a resume by hand ends our pause
    if verdict.pause:
        patch.spec["suspend"] = True
        paused, paused_at = True, complained
        kopf.warn(body, reason=COMPLAINT_PAUSE, message=verdict.message)
    elif verdict.level is Level.WARNING and before.get("level") != Level.WARNING.value:
        kopf.warn(body, reason="ComplaintRateWarning", message=verdict.message)
    out: dict[str, Any] = {
        "rate": rate_text(verdict.rate_percent),
        "complained": complained,
        "delivered": delivered,
        "level": verdict.level.value,
        "paused": paused,
        "pausedAtComplaints": paused_at,
    }
    generation = body.get("metadata", {}).get("generation")
    cond = condition(
        COMPLAINT_RATE_HIGH,
        verdict.level is not Level.OK,
        verdict.level.value,
        verdict.message,
        generation,
    )
    return out, cond


async def _rearm_if_audience_fixed(
    kube: kube_io.Kube, namespace: str, spec: dict[str, Any], fanout: FanoutCheckpoint, body: Any
) -> FanoutCheckpoint | None:
    """The checkpoint patch that lets the fan-out try again, when it Failed on
    its audience ConfigMap and that ConfigMap changed since; else None.

    The fan-out daemon is spawned on status (`progress.fanout_wanted`), and a
    ConfigMap edit is no Campaign event: without this, fixing the bad row (or
    creating the missing ConfigMap) left the campaign Failed until its spec
    was edited too."""
    if fanout.state is not FanoutState.FAILED or fanout.audience_version is None:
        return None
    configmap = audience_configmap(spec)
    if configmap is None:
        return None
    version = await asyncio.to_thread(kube.configmap_version, namespace, configmap)
    if not audience_fix_pending(fanout, version):
        return None
    message = f"audience ConfigMap {configmap} changed: checking the audience again"
    kopf.info(body, reason="AudienceChanged", message=message)
    return FanoutCheckpoint(
        state=FanoutState.WAITING_FOR_POOL,
        message=message,
        reason=None,
        audience_version=None,
        generation=fanout.generation,
    )


def _publish_state(
    state: OperatorState, namespace: str, name: str, pool_name: str, campaign: CampaignState
) -> str | None:
    """Tell the pool's relays (compacted control topic) to hold or drop this campaign.

    None once told; else why not: "" when the pool is gone (nobody to tell), or
    why its Kafka may not be contacted (`Pool.kafka_refusal`: its relays never
    ran, or were stopped, and are not told through a Kafka the policy refuses)."""
    pool = get_pool(state.kube, namespace, pool_name)
    if pool is None:
        return ""
    refused = pool.kafka_refusal(state.policy)
    if refused is not None:
        return refused
    key = f"{namespace}/{name}"
    control = CampaignControl(campaign=key, state=campaign, time=time.time())
    producer = state.producers.get(pool.bootstrap)
    kafka_io.produce_all(producer, pool.topics.control, [(key.encode(), encode(control))])
    return None


def _not_deleted(meta: Any, **_: Any) -> bool:
    return not meta.get("deletionTimestamp")


# A campaign being deleted is cancelled by `delete_campaign`; a pause still being
# retried against an unreachable Kafka must not keep its finalizer (ARCHITECTURE.md, "Status is the
# world's").
@kopf.on.field(GROUP, VERSION, "campaigns", field="spec.suspend", when=_not_deleted)
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
    why_not = await asyncio.to_thread(
        _publish_state, operator_state(memo), namespace, name, spec.get("poolRef", ""), campaign
    )
    reason = "Paused" if new else "Resumed"
    if why_not is None:
        kopf.info(body, reason=reason, message=f"relays told: {campaign.value}")
    elif why_not:
        kopf.info(body, reason=reason, message=f"relays not told: {why_not}")


# A campaign's deletion never waits forever (ARCHITECTURE.md, "Status is the world's"): a
# Kafka that cannot be reached is retried (`OperatorTimers.cancel_retry_seconds`)
# until the give-up time, then the campaign goes with a Warning Event saying the
# relays were not told.
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
    give_up = state.timers.delete_give_up_seconds
    if runtime.total_seconds() >= give_up:
        why = memo.get(CANCEL_FAILURE_MEMO, "no answer from Kafka")
        message = f"relays not told to drop its records: gave up after {give_up:.0f}s ({why})"
        kopf.warn(body, reason="CancelNotPublished", message=message)
    else:
        try:
            why_not = await asyncio.to_thread(
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
                memo[CANCEL_FAILURE_MEMO], delay=state.timers.cancel_retry_seconds
            ) from exc
        if why_not:  # an invalid pool spec, or a Kafka the operator may not contact
            message = f"relays not told to drop its records: {why_not}"
            kopf.warn(body, reason="CancelNotPublished", message=message)
    state.tally.forget(f"{namespace}/{name}")


@kopf.on.create(GROUP, VERSION, "campaigns")
@kopf.on.update(GROUP, VERSION, "campaigns")
@kopf.on.resume(GROUP, VERSION, "campaigns")
async def accept_spec(spec: Any, status: Any, meta: Any, body: Any, patch: Any, **_: Any) -> None:
    """Accept a new generation, or refuse the edits fan-out can no longer apply.

    Before fan-out started (or while it is Failed) every field is accepted and
    its digest kept in status.acceptedSpec; after, a change to a frozen field
    (`validation.FROZEN_AFTER_FANOUT`) is refused: status.refusedEdit, a
    Warning Event, and (from the status timer, the one writer of conditions)
    SpecAccepted=False and Stalled; the fan-out holds until it is reverted.
    Either way this generation was observed (status.observedGeneration).
    """
    generation = meta.get("generation")
    fanout = FanoutCheckpoint.from_status(status)
    started = fanout.state is not FanoutState.FAILED and (
        fanout.started_at is not None or fanout.state in (FanoutState.RUNNING, FanoutState.DONE)
    )
    raw = dict(spec)
    refused = refused_edits(status.get("acceptedSpec"), raw) if started else []
    if refused:
        message = edit_refused_message(refused)
        patch.status["refusedEdit"] = {"fields": refused, "message": message}
        kopf.warn(body, reason=EDIT_REFUSED, message=message)
    else:
        patch.status["acceptedSpec"] = frozen_digests(raw)
        patch.status["refusedEdit"] = None  # merge patch: removed
    patch.status["observedGeneration"] = generation
