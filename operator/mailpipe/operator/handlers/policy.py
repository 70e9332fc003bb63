"""The cluster policy followed while the operator runs: a change reaches every pool.

The policy is a ConfigMap mounted into the operator's pod (chart values
`policy:`). The kubelet rewrites a mounted ConfigMap in place when it changes
(a new hidden directory, then one atomic rename of the `..data` symlink), so
the file's path stays and a read sees the old or the new content whole (a
`subPath` mount is never updated: the chart mounts the directory). The
operator re-reads it every POLICY_RECHECK_SECONDS (`cluster_policy.PolicyFile`;
one small read when nothing changed) rather than watching the ConfigMap: it
needs no API right on ConfigMaps (ARCHITECTURE.md, "Least privilege") and works the
same with `--policy` pointing at any file.

On a change, the new policy is put in force first (every later reconcile uses
it), then every pool this operator reconciled is judged under the old and the
new policy (`cluster_policy.policy_changes`, pure); each pool whose verdict
changed is logged and reconciled again, which scales a refused pool's relays
to 0 or brings an allowed one back (`handlers.pool`, Warning Events
`PolicyViolation` and `RelaysStopped` on the pool). A new policy that cannot be
used is an error in the log; the one in force stays.

How long a change takes to reach a pool: the kubelet's update of the mounted
ConfigMap (its sync period, 1 minute by default, plus its cache), then at most
POLICY_RECHECK_SECONDS, then one reconcile per affected pool (a few API calls,
RECHECK_CONCURRENCY at a time).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from typing import Any, cast

import kopf
from pydantic import ValidationError

from .. import kube_io, tenancy
from ..cluster_policy import (
    POLICY_FILE_MEMO_KEY,
    ClusterPolicy,
    PolicyChange,
    PolicyError,
    PolicyFile,
    policy_changes,
)
from ..models import GROUP, VERSION, SendingPoolSpec
from . import pool, relays, warmup
from .context import OperatorState, operator_state, parse_pool_spec

log = logging.getLogger("mailpipe.operator")

# How often the mounted policy file is re-read: one read of a small file, so
# a few seconds adds little to the kubelet's own propagation delay. Tests and
# impatient platforms may shorten it.
POLICY_RECHECK_SECONDS = float(os.environ.get("MAILPIPE_POLICY_RECHECK_SECONDS", "5"))
# Affected pools reconciled at once after a change: each is a few API calls;
# the rest queue behind them rather than flooding the API server.
RECHECK_CONCURRENCY = 8


@kopf.on.event(GROUP, VERSION, "sendingpools")
async def pool_watched(
    name: str, namespace: str | None, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Keep the set of pools a policy change re-checks; follow the policy file.

    The follower starts here, with the first pool seen, not at startup: kopf
    posts Events only from a resource's own task, and the follower's task
    inherits this one's context (a policy with no pool has nothing to enforce).
    A standby replica (peering) sees no events, so it neither keeps pools nor
    follows the policy; one that was active before keeps re-checking the pools
    it saw, writing what the active one writes.
    """
    state = operator_state(memo)
    key = f"{namespace}/{name}"
    if type == "DELETED":
        state.pools.discard(key)
    else:
        state.pools.add(key)
    source = memo.get(POLICY_FILE_MEMO_KEY)
    if state.policy_task is None and isinstance(source, PolicyFile):
        state.policy_task = asyncio.get_running_loop().create_task(
            follow(state, source), name="cluster-policy"
        )


async def stop(state: OperatorState) -> None:
    """Stop following the policy (operator shutdown), and any Kafka retry it started."""
    task, state.policy_task = state.policy_task, None
    tasks = [*([task] if task is not None else []), *state.retries]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def follow(state: OperatorState, source: PolicyFile) -> None:
    """Re-read the policy file for ever; put a new valid policy in force over every pool."""
    log.info(
        "following cluster policy %s (re-read every %.0fs)", source.path, POLICY_RECHECK_SECONDS
    )
    unchecked: ClusterPolicy | None = None  # the pools' last verdicts, while a re-check failed
    while True:
        await asyncio.sleep(POLICY_RECHECK_SECONDS)
        try:
            new = await asyncio.to_thread(source.reread)
        except PolicyError as exc:
            new = None
            log.error("%s; the cluster policy in force stays", exc)
        if new is not None:
            # in force at once: every reconcile from now on (kopf's too) judges by it
            unchecked = unchecked or state.policy
            state.policy = new
        if unchecked is None:
            continue
        try:
            await recheck(state, unchecked, state.policy)
            unchecked = None
        except Exception:  # pools not listed or not reconciled: the re-check is retried next tick
            log.exception("re-checking pools after a cluster policy change failed; retrying")


async def recheck(state: OperatorState, old: ClusterPolicy, new: ClusterPolicy) -> None:
    """Reconcile every pool whose verdict changed from `old` to `new`; log each."""
    pools, bodies = await asyncio.to_thread(_read_pools, state.kube, sorted(state.pools))
    changes = policy_changes(old, new, pools)
    log.warning("cluster policy changed: %d pools checked, %d affected", len(pools), len(changes))
    for change in changes:  # one line each, for whoever greps the log for a pool
        log.log(logging.WARNING if change.refused else logging.INFO, "%s", change.describe())
    gate = asyncio.Semaphore(RECHECK_CONCURRENCY)
    # Pools whose Kafka the operator may contact now and could not before, or
    # the reverse: no pool event says so, so their events are (un)followed here.
    kafka_changed = {
        f"{ns}/{name}"
        for ns, name, spec in pools
        if (tenancy.kafka_refusal(ns, name, spec.kafka, old) is None)
        != (tenancy.kafka_refusal(ns, name, spec.kafka, new) is None)
    }

    async def one(change: PolicyChange) -> None:
        async with gate:
            namespace, name = change.pool.split("/", 1)
            if not change.refused:  # the refusal's own Events come from the reconcile
                message = "the cluster policy now allows this pool: relays back to spec.replicas"
                kopf.info(bodies[change.pool], reason="PolicyAllowed", message=message)
            if change.pool in kafka_changed:  # its events: followed only while allowed
                warmup.track(state, namespace, name, bodies[change.pool])
            try:
                outcome = await pool.reconcile(state, namespace, name, ensure_topics=True)
            except Exception:  # one pool's failure must not hold up the others
                log.exception("pool %s: reconcile after a policy change failed", change.pool)
                failed.append(change.pool)
                return
        if outcome.kafka is not None:
            # An allowed pool whose Kafka is away: retried apart, so one
            # unreachable Kafka never holds up the next policy change.
            retry = asyncio.create_task(relays.sync(state, namespace, name, ensure_topics=True))
            state.retries.add(retry)
            retry.add_done_callback(state.retries.discard)

    failed: list[str] = []
    await asyncio.gather(*(one(c) for c in changes))
    if failed:  # follow() re-runs the whole re-check (reconciles are idempotent)
        raise RuntimeError(f"not re-checked: {', '.join(sorted(failed))}")


def _read_pools(
    kube: kube_io.Kube, keys: list[str]
) -> tuple[list[tuple[str, str, SendingPoolSpec]], dict[str, kopf.Body]]:
    """The pools `keys` (namespace/name) as they are now: one list call per
    namespace. A pool gone, being deleted or whose spec does not parse is left
    out (its verdict is not the policy's)."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for key in keys:
        namespace, name = key.split("/", 1)
        wanted[namespace].add(name)
    pools, bodies = [], {}
    for namespace, names in sorted(wanted.items()):
        for obj in kube.list_pools(namespace):
            meta: dict[str, Any] = obj["metadata"]
            if meta["name"] not in names or meta.get("deletionTimestamp"):
                continue
            try:
                spec = parse_pool_spec(obj.get("spec") or {})
            except ValidationError:
                continue
            pools.append((namespace, meta["name"], spec))
            bodies[f"{namespace}/{meta['name']}"] = kopf.Body(cast(kopf.RawBody, obj))
    return pools, bodies
