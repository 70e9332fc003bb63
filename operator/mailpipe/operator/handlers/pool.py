"""SendingPool handlers: the one place the operator writes a pool's relay Deployment.

create/update/resume: parse the spec, render the children with the pure
builders in `mailpipe.operator.pool` (ConfigMap, Deployment, Service, PDB),
server-side apply them (`kube_io.apply_all`), create the pool's topics, then
report conditions. A timer reports per-IP warm-up, counted from the pool's
events topic exactly as the relays count it. delete removes the children.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf
from kafka.errors import KafkaError
from pydantic import ValidationError

from mailpipe.contracts.warmup import WarmupLedger

from .. import kafka_io, kube_io, tenancy
from ..models import GROUP, VERSION, SendingPoolSpec
from ..pool import PoolRef, build_children, build_relay_config, config_hash, topics
from .context import OperatorState, operator_state, parse_pool_spec
from .status import condition, merge_conditions

log = logging.getLogger("mailpipe.operator")

KAFKA_RETRY_SECONDS = 15  # a broker that refuses topic creation is retried at this pace
WARMUP_STATUS_INTERVAL_SECONDS = 15.0  # warm-up moves by the day: a slow refresh is plenty
WARMUP_STATUS_IDLE_SECONDS = 5  # let a just-edited pool settle before its first report
WARMUP_LEDGER_RELAY_ID = "operator"  # the ledger only reads events; it never sends as a relay


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
    memo: kopf.Memo,
    **_: Any,
) -> None:
    assert namespace is not None  # both kinds are namespaced
    generation = meta.get("generation")
    old_conditions = list(status.get("conditions", []))
    try:
        parsed = parse_pool_spec(spec)
    except ValidationError as exc:
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        patch.status["conditions"] = merge_conditions(
            old_conditions, [condition("Ready", False, "InvalidSpec", message, generation)]
        )
        kopf.warn(body, reason="InvalidSpec", message=message)
        raise kopf.PermanentError(message) from exc
    refuse_foreign_pool(namespace, name, parsed, memo, old_conditions, generation, body, patch)
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
            t.compacted(),
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
        raise kopf.TemporaryError(message, delay=KAFKA_RETRY_SECONDS) from exc
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
    _follow_pool_events(operator_state(memo), ref, parsed)


def refuse_foreign_pool(
    namespace: str,
    name: str,
    spec: SendingPoolSpec,
    memo: kopf.Memo,
    old_conditions: list[dict[str, Any]],
    generation: int | None,
    body: Any,
    patch: Any,
) -> None:
    """A pool naming another tenant's topics or breaking the cluster policy gets
    Ready=False with the reason and a Warning, and nothing is applied or created
    (`tenancy.refusal`)."""
    refused = tenancy.refusal(namespace, name, spec, tenancy.policy_of(memo))
    if refused is None:
        return
    patch.status["conditions"] = merge_conditions(
        old_conditions, [condition("Ready", False, refused.reason, refused.message, generation)]
    )
    patch.status["observedGeneration"] = generation
    kopf.warn(body, reason=refused.reason, message=refused.message)
    raise kopf.PermanentError(f"{refused.reason}: {refused.message}")


def _follow_pool_events(state: OperatorState, ref: PoolRef, spec: SendingPoolSpec) -> None:
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


@kopf.on.delete(GROUP, VERSION, "sendingpools")
async def delete_pool(
    name: str, namespace: str | None, uid: str, memo: kopf.Memo, **_: Any
) -> None:
    assert namespace is not None  # both kinds are namespaced
    deleted = await asyncio.to_thread(kube_io.delete_children, PoolRef(name, namespace, uid))
    operator_state(memo).ledgers.pop(f"{namespace}/{name}", None)
    log.info("deleted children of pool %s/%s: %s", namespace, name, deleted)
