"""kopf handlers: parse, delegate to pure builders and IO modules, patch status.

SendingPool: create/update/resume render the children (`pool`), apply them
(`kube_io`), create the topics (`kafka_io`) and report conditions; a timer
reports per-IP warm-up from the events topic; delete removes the children.

Campaign: a daemon per campaign waits for its pool, fans the audience out to
Kafka in checkpointed chunks (see `kafka_io` for why that is exactly-once),
and exits; a timer turns the events topic into counts and the phase.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from typing import Any

import kopf
from kafka.errors import KafkaError
from pydantic import ValidationError

from mailpipe.contracts.warmup import WarmupLedger
from mailpipe.contracts.wire import CampaignControl, CampaignState, encode

from . import campaign as camp
from . import kafka_io, kube_io
from .models import GROUP, VERSION, CampaignSpec, SendingPoolSpec
from .pool import PoolRef, build_children, build_relay_config, config_hash, topics
from .tally import Tally

log = logging.getLogger("mailpipe.operator")

# records per checkpoint: ~50 status patches for 100k recipients (env: tests use smaller)
FANOUT_CHUNK = int(os.environ.get("MAILPIPE_FANOUT_CHUNK", "2000"))
STATUS_INTERVAL_SECONDS = 3.0  # counts are patched at most this often
POOL_STATUS_INTERVAL_SECONDS = 15.0
WAIT_SECONDS = 2.0

HUB = kafka_io.EventsHub()
TALLY = Tally()
PRODUCERS = kafka_io.Producers()
LEDGERS: dict[str, WarmupLedger] = {}
FOLLOWED: set[str] = set()  # campaigns whose pool's events topic is followed


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Settings for a real cluster: bounded watches, readable events, a finalizer name."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.watching.server_timeout = 300  # re-list every 5 min: survives silent watch drops
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.INFO
    settings.execution.max_workers = 8  # fan-out daemons run in threads
    HUB.start(asyncio.get_running_loop())


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    HUB.stop()
    await asyncio.to_thread(PRODUCERS.close)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str, status: bool, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now_iso(),
    }


def merge_conditions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep lastTransitionTime when a condition's status did not change."""
    previous = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        p = previous.get(c["type"])
        if p is not None and p.get("status") == c["status"]:
            c = {**c, "lastTransitionTime": p.get("lastTransitionTime", c["lastTransitionTime"])}
        out.append(c)
    return out


# --- SendingPool ------------------------------------------------------------------


def _parse_pool(spec: Any) -> SendingPoolSpec:
    return SendingPoolSpec.model_validate(dict(spec))


@kopf.on.create(GROUP, VERSION, "sendingpools")
@kopf.on.update(GROUP, VERSION, "sendingpools")
@kopf.on.resume(GROUP, VERSION, "sendingpools")
async def reconcile_pool(
    spec: Any,
    name: str,
    namespace: str | None,
    uid: str,
    meta: Any,
    status: Any,
    body: Any,
    patch: Any,
    **_: Any,
) -> None:
    assert namespace is not None  # both kinds are namespaced
    generation = meta.get("generation")
    old_conditions = list(status.get("conditions", []))
    try:
        parsed = _parse_pool(spec)
    except ValidationError as exc:
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        patch.status["conditions"] = merge_conditions(
            old_conditions, [condition("Ready", False, "InvalidSpec", message, generation)]
        )
        kopf.warn(body, reason="InvalidSpec", message=message)
        raise kopf.PermanentError(message) from exc
    ref = PoolRef(name, namespace, uid)
    text, children = build_children(ref, parsed)
    written = await asyncio.to_thread(kube_io.apply_all, children)
    if written:
        kopf.info(body, reason="Applied", message="updated " + ", ".join(written))
    t = topics(ref, parsed)
    try:
        created = await asyncio.to_thread(
            kafka_io.ensure_topics,
            parsed.kafka.bootstrap_servers,
            t.all(),
            parsed.kafka.partitions,
            parsed.kafka.replication_factor,
            [t.suppressions, t.control],
        )
    except KafkaError as exc:
        message = f"cannot create topics on {parsed.kafka.bootstrap_servers}: {exc}"
        patch.status["conditions"] = merge_conditions(
            old_conditions,
            [
                condition("Ready", False, "KafkaUnavailable", message, generation),
                condition("Degraded", True, "KafkaUnavailable", message, generation),
            ],
        )
        kopf.warn(body, reason="KafkaUnavailable", message=message)
        raise kopf.TemporaryError(message, delay=15) from exc
    if created:
        kopf.info(body, reason="TopicsCreated", message=", ".join(created))
    deployment = await asyncio.to_thread(kube_io.read_deployment_status, ref)
    available = deployment.get("availableReplicas", 0)
    waiting = available < parsed.replicas
    patch.status["conditions"] = merge_conditions(
        old_conditions,
        [
            # Ready: the pool's resources and topics are in place, so campaigns
            # may enqueue; relays consume whenever they run.
            condition(
                "Ready",
                True,
                "Reconciled",
                "relay config, workloads and topics in place",
                generation,
            ),
            condition(
                "Progressing",
                waiting,
                "WaitingForReplicas" if waiting else "ReplicasAvailable",
                f"{available}/{parsed.replicas} relay replicas available",
                generation,
            ),
            condition("Degraded", False, "AsExpected", "", generation),
        ],
    )
    patch.status["observedGeneration"] = generation
    patch.status["configHash"] = config_hash(text)
    patch.status["topics"] = {
        "outbound": t.outbound,
        "events": t.events,
        "dlq": t.dlq,
        "delay": t.delay,
    }
    patch.status["ipCount"] = len(parsed.egress_ips)
    warming = sum(1 for e in parsed.egress_ips if e.warmup)
    patch.status["warmupSummary"] = f"{warming} warming" if warming else "warm"
    _follow_pool_events(ref, parsed)


def _follow_pool_events(ref: PoolRef, spec: SendingPoolSpec) -> None:
    key = f"{ref.namespace}/{ref.name}"
    cfg = build_relay_config(ref, spec)
    ledger = LEDGERS.get(key)
    if ledger is None:
        ledger = LEDGERS[key] = WarmupLedger(cfg, relay_id="operator")
        HUB.follow(
            spec.kafka.bootstrap_servers,
            topics(ref, spec).events,
            lambda e: ledger.observe(e, True),
        )
    else:
        ledger.reconfigure(cfg)
    HUB.follow(spec.kafka.bootstrap_servers, topics(ref, spec).events, TALLY.observe)


@kopf.timer(GROUP, VERSION, "sendingpools", interval=POOL_STATUS_INTERVAL_SECONDS, idle=5)
async def pool_warmup_status(
    name: str, namespace: str | None, status: Any, patch: Any, **_: Any
) -> None:
    assert namespace is not None  # both kinds are namespaced
    ledger = LEDGERS.get(f"{namespace}/{name}")
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


@kopf.on.delete(GROUP, VERSION, "sendingpools")
async def delete_pool(name: str, namespace: str | None, uid: str, body: Any, **_: Any) -> None:
    assert namespace is not None  # both kinds are namespaced
    deleted = await asyncio.to_thread(kube_io.delete_children, PoolRef(name, namespace, uid))
    LEDGERS.pop(f"{namespace}/{name}", None)
    log.info("deleted children of pool %s/%s: %s", namespace, name, deleted)


# --- Campaign ---------------------------------------------------------------------


def _fanout_status(namespace: str, name: str, **fields: Any) -> None:
    kube_io.patch_status("campaigns", namespace, name, {"fanout": fields})


def _pool_ready(pool: dict[str, Any] | None) -> tuple[bool, str]:
    if pool is None:
        return False, "PoolNotFound"
    for c in pool.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready":
            return c.get("status") == "True", c.get("reason", "PoolNotReady")
    return False, "PoolNotReconciled"


@kopf.daemon(GROUP, VERSION, "campaigns", cancellation_timeout=30)
def fanout(
    stopped: Any, name: str, namespace: str | None, uid: str, spec: Any, body: Any, **_: Any
) -> None:
    assert namespace is not None  # both kinds are namespaced
    campaign_key = f"{namespace}/{name}"
    while not stopped:
        obj = kube_io.get_custom("campaigns", namespace, name)
        if obj is None:
            return
        state = obj.get("status", {}).get("fanout", {})
        if state.get("state") in ("done", "failed"):
            return
        if spec.get("suspend"):
            if state.get("state") != "paused":
                _fanout_status(namespace, name, state="paused")
            stopped.wait(WAIT_SECONDS)
            continue
        pool = kube_io.get_custom("sendingpools", namespace, spec.get("poolRef", ""))
        ready, reason = _pool_ready(pool)
        if not ready:
            if state.get("state") != "waitingForPool":
                _fanout_status(namespace, name, state="waitingForPool", message=reason)
            stopped.wait(WAIT_SECONDS)
            continue
        assert pool is not None
        try:
            _run_fanout(stopped, campaign_key, uid, dict(spec), pool, state, body)
        except camp.CampaignError as exc:
            _fanout_status(namespace, name, state="failed", message=str(exc))
            kopf.warn(body, reason="FanoutFailed", message=str(exc))
            return
        except KafkaError as exc:
            log.warning("fan-out of %s paused by Kafka error: %s", campaign_key, exc)
            stopped.wait(10 * WAIT_SECONDS)
            continue
        return


def _run_fanout(
    stopped: Any,
    key: str,
    uid: str,
    spec_raw: dict[str, Any],
    pool: dict[str, Any],
    state: dict[str, Any],
    body: Any,
) -> None:
    namespace, name = key.split("/", 1)
    try:
        spec = CampaignSpec.model_validate(spec_raw)
        pool_spec = _parse_pool(pool["spec"])
    except ValidationError as exc:
        raise camp.CampaignError(str(exc)) from exc
    pool_ref = PoolRef(pool["metadata"]["name"], namespace, pool["metadata"]["uid"])
    t = topics(pool_ref, pool_spec)
    bootstrap = pool_spec.kafka.bootstrap_servers
    HUB.follow(bootstrap, t.events, TALLY.observe)

    cm_data = None
    if spec.audience.config_map_ref is not None:
        cm_data = kube_io.read_configmap(namespace, spec.audience.config_map_ref.name)
    audience = camp.parse_audience(spec, cm_data)
    renderer = camp.Renderer(spec, key)
    suppressed = kafka_io.read_suppressions(bootstrap, t.suppressions)
    total = len(audience)
    start = int(state.get("nextIndex", 0))
    skip: set[int] = set()
    if state.get("offsets"):
        since = {int(p): int(o) for p, o in state["offsets"].items()}
        skip = kafka_io.produced_since(bootstrap, t.outbound, since, uid)
    enqueued = int(state.get("enqueued", 0))
    pre_suppressed = int(state.get("suppressedBeforeSend", 0))
    if start == 0 and not state:
        kopf.info(body, reason="FanoutStarted", message=f"{total} recipients to {t.outbound}")
    started_at = state.get("startedAt") or now_iso()
    producer = PRODUCERS.get(bootstrap)
    index = start
    while index < total:
        if stopped or kube_io.get_custom("campaigns", namespace, name) is None:
            return
        offsets = kafka_io.end_offsets(bootstrap, t.outbound)
        _fanout_status(
            namespace,
            name,
            state="running",
            nextIndex=index,
            offsets={str(p): o for p, o in offsets.items()},
            enqueued=enqueued,
            suppressedBeforeSend=pre_suppressed,
            total=total,
            startedAt=started_at,
        )
        now = time.time()
        batch: list[tuple[bytes, bytes]] = []
        for i in range(index, min(index + FANOUT_CHUNK, total)):
            r = audience[i]
            if r.address.lower() in suppressed:
                pre_suppressed += 1
                continue
            enqueued += 1
            if i in skip:
                continue  # produced before the operator restarted
            record = camp.build_record(
                campaign=key, uid=uid, index=i, recipient=r, spec=spec, renderer=renderer, now=now
            )
            batch.append((record.domain.encode(), encode(record)))
        kafka_io.produce_all(producer, t.outbound, batch)
        index = min(index + FANOUT_CHUNK, total)
    _fanout_status(
        namespace,
        name,
        state="done",
        nextIndex=total,
        offsets=None,
        enqueued=enqueued,
        suppressedBeforeSend=pre_suppressed,
        total=total,
        startedAt=started_at,
    )
    kopf.info(
        body,
        reason="FanoutDone",
        message=f"{enqueued} records enqueued, {pre_suppressed} suppressed",
    )


def campaign_phase(
    fanout_state: dict[str, Any],
    counts: dict[str, int],
    spec: dict[str, Any],
    finished: int,
    now: float,
) -> tuple[str, str]:
    """(phase, reason) from the fan-out state and the counts. Pure."""
    state = fanout_state.get("state")
    if state == "failed":
        return "Failed", fanout_state.get("message", "fan-out failed")
    if spec.get("suspend"):
        return "Paused", "suspended"
    if state == "waitingForPool" or state is None:
        return "Pending", fanout_state.get("message", "waiting for the pool")
    start = camp.parse_start(spec.get("startAt"))
    total = int(fanout_state.get("total", 0))
    if state == "done":
        if finished + int(fanout_state.get("suppressedBeforeSend", 0)) >= total:
            return "Completed", "every recipient has a final disposition"
        if start is not None and start > now and finished == 0:
            return "Scheduled", "waiting for startAt"
        return "Sending", "waiting for dispositions"
    return "Sending", "fanning out"


@kopf.timer(GROUP, VERSION, "campaigns", interval=STATUS_INTERVAL_SECONDS, idle=1)
async def campaign_status(
    name: str, namespace: str | None, spec: Any, status: Any, body: Any, patch: Any, **_: Any
) -> None:
    assert namespace is not None  # both kinds are namespaced
    key = f"{namespace}/{name}"
    if key not in FOLLOWED:
        pool = await asyncio.to_thread(
            kube_io.get_custom, "sendingpools", namespace, spec.get("poolRef", "")
        )
        if pool is not None:
            pool_spec = _parse_pool(pool["spec"])
            ref = PoolRef(pool["metadata"]["name"], namespace, pool["metadata"]["uid"])
            HUB.follow(
                pool_spec.kafka.bootstrap_servers, topics(ref, pool_spec).events, TALLY.observe
            )
            FOLLOWED.add(key)
    fanout_state = dict(status.get("fanout", {}))
    counts = TALLY.counts(key)
    counts["suppressed"] += int(fanout_state.get("suppressedBeforeSend", 0))
    counts["total"] = int(fanout_state.get("total", 0))
    counts["enqueued"] = int(fanout_state.get("enqueued", 0))
    finished = TALLY.finished(key)
    phase, reason = campaign_phase(fanout_state, counts, dict(spec), finished, time.time())
    total = counts["total"]
    done = finished + int(fanout_state.get("suppressedBeforeSend", 0))
    progress = f"{(100 * done // total) if total else 0}%"
    new: dict[str, Any] = {"counts": counts, "progress": progress, "phase": phase}
    if phase != status.get("phase"):
        kopf.info(body, reason=phase, message=reason)
        new["conditions"] = merge_conditions(
            list(status.get("conditions", [])),
            [
                condition(
                    "Completed",
                    phase == "Completed",
                    phase,
                    reason,
                    body.get("metadata", {}).get("generation"),
                )
            ],
        )
    if fanout_state.get("startedAt") and not status.get("startedAt"):
        new["startedAt"] = fanout_state["startedAt"]
    if phase == "Completed" and not status.get("completedAt"):
        new["completedAt"] = now_iso()
    for k, v in new.items():
        if status.get(k) != v:
            patch.status[k] = v


def _publish_state(namespace: str, name: str, pool_name: str, state: CampaignState) -> bool:
    """Tell the pool's relays (compacted control topic) to hold or drop this campaign."""
    pool = kube_io.get_custom("sendingpools", namespace, pool_name)
    if pool is None:
        return False
    pool_spec = _parse_pool(pool["spec"])
    ref = PoolRef(pool["metadata"]["name"], namespace, pool["metadata"]["uid"])
    key = f"{namespace}/{name}"
    control = CampaignControl(campaign=key, state=state, time=time.time())
    producer = PRODUCERS.get(pool_spec.kafka.bootstrap_servers)
    kafka_io.produce_all(
        producer, topics(ref, pool_spec).control, [(key.encode(), encode(control))]
    )
    return True


@kopf.on.field(GROUP, VERSION, "campaigns", field="spec.suspend")
async def suspend_changed(
    name: str, namespace: str | None, spec: Any, old: Any, new: Any, body: Any, **_: Any
) -> None:
    assert namespace is not None  # both kinds are namespaced
    if old is None and not new:
        return  # created unsuspended: nothing to tell the relays
    state = CampaignState.PAUSED if new else CampaignState.ACTIVE
    if await asyncio.to_thread(_publish_state, namespace, name, spec.get("poolRef", ""), state):
        kopf.info(
            body, reason="Paused" if new else "Resumed", message=f"relays told: {state.value}"
        )


@kopf.on.delete(GROUP, VERSION, "campaigns")
async def delete_campaign(name: str, namespace: str | None, spec: Any, **_: Any) -> None:
    assert namespace is not None  # both kinds are namespaced
    # Records already on Kafka are dropped by the relays with a `failed` event.
    await asyncio.to_thread(
        _publish_state, namespace, name, spec.get("poolRef", ""), CampaignState.CANCELLED
    )
    TALLY.forget(f"{namespace}/{name}")
