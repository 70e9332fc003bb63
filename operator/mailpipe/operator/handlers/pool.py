"""SendingPool handlers: the one place the operator writes a pool's relay Deployment.

create/update/resume: parse the spec, render the children with the pure
builders in `mailpipe.operator.pool` (ConfigMap, Deployment, Service, PDB),
server-side apply them (`kube_io.apply_all`), create the pool's topics, then
report conditions. delete removes the children. Per-IP warm-up status is
`handlers/warmup.py`'s (it only reads).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from kafka.errors import KafkaError
from pydantic import ValidationError

from .. import kafka_io, kube_io
from ..models import GROUP, VERSION
from ..pool import PoolRef, build_children, config_hash, topics
from .context import operator_state, parse_pool_spec
from .status import condition, merge_conditions

log = logging.getLogger("mailpipe.operator")

KAFKA_RETRY_SECONDS = 15  # a broker that refuses topic creation is retried at this pace


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


@kopf.on.delete(GROUP, VERSION, "sendingpools")
async def delete_pool(
    name: str, namespace: str | None, uid: str, memo: kopf.Memo, **_: Any
) -> None:
    assert namespace is not None  # both kinds are namespaced
    deleted = await asyncio.to_thread(kube_io.delete_children, PoolRef(name, namespace, uid))
    operator_state(memo).ledgers.pop(f"{namespace}/{name}", None)
    log.info("deleted children of pool %s/%s: %s", namespace, name, deleted)
