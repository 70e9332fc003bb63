"""A pool's ConfigMap, Service and PDB are the operator's: edited or deleted, they are put back.

So are its endpoints' children (feedback receiver, unsubscribe and submission endpoints),
Deployments included: no watch follows those (`child_drift.guarded`).

The relay Deployment is watched (`handlers.relays`) and applied back within a
second of an edit. Its other children were applied once and never looked at
again (issue 17): a tenant with the namespace's built-in `edit` role patched
the relay ConfigMap, the relays reloaded it and delivered to a route the
cluster policy forbids, and the ConfigMap stayed changed. Relays now refuse a
config the operator did not sign (`config_signing`); this handler puts the
operator's own back, so they keep (or get) the config they should have.

ConfigMaps cannot be watched without reading every ConfigMap of every tenant
namespace (RBAC cannot filter by label, and the operator may only `get` them
by name: least privilege), so the guard reads each pool's children by name
every `child_drift.RECHECK_FLOOR_SECONDS` (less often when the pools together
would read more than `child_drift.CHILD_READS_PER_SECOND`: the reads of
a thousand pools must not crowd out their reconciles) and compares them with
what the last reconcile rendered (`OperatorState.rendered`, `child_drift.changes`). A child
that differs or is gone is applied back (forced) and named in a Warning Event
(`ChildReverted`) with the fields that were changed. A pool that may not run
relays (refused, invalid) has nothing rendered, so nothing of it is put back.

One operator-wide task walks the pools (`guard_loop`), not a kopf timer per
pool: with 1,200 pools, 240 timer ticks a second, each a handler call and a
log line, were 44% of the event loop's busy time (py-spy, bench/operator.py),
although all but a few only found their pool not due. The pools it walks are
those with something rendered, so a deleted or refused pool leaves it. Like
the policy follower (`handlers.policy`), an operator that lost its leadership
(peering) keeps guarding what it rendered: it writes what the active one writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import kopf

from .. import child_drift, kube_io
from .context import OperatorState, cancel_task

log = logging.getLogger("mailpipe.operator")

CHILD_REVERTED = "ChildReverted"  # the Warning Event's reason
PATHS_SHOWN = 5  # an Event names a few changed fields, not a whole ConfigMap
# How often the loop looks for pools due: a small share of the floor (5 s),
# and a walk of 1,000 keys is a fraction of a millisecond.
SCAN_SECONDS = 1.0


def _revert_blocking(kube: kube_io.Kube, rendered: list[dict[str, Any]]) -> list[str]:
    """Apply back each guarded child that differs from `rendered`; what was put back."""
    reverted = []
    for child in rendered:
        kind = child["kind"]
        if not child_drift.guarded(child):
            continue
        meta = child["metadata"]
        live = kube.read_child(kind, meta["name"], meta["namespace"])
        changed = child_drift.changes(child, live)
        if changed:
            kube.apply(child, force=True)
            foreign = child_drift.foreign_keys(child, live)
            if foreign:  # another manager's fields outlive our apply
                kube.remove_data_keys(meta["name"], meta["namespace"], foreign)
            shown = ", ".join(changed[:PATHS_SHOWN])
            more = f" and {len(changed) - PATHS_SHOWN} more" if len(changed) > PATHS_SHOWN else ""
            reverted.append(f"{kind}/{meta['name']} ({shown}{more})")
    return reverted


def _pool_body(rendered: list[dict[str, Any]]) -> kopf.Body:
    """The pool as an Event's subject, from its children's owner reference: the
    loop holds no pool object, and reads none to name it."""
    owner = rendered[0]["metadata"]["ownerReferences"][0]
    meta = {
        "name": owner["name"],
        "namespace": rendered[0]["metadata"]["namespace"],
        "uid": owner["uid"],
    }
    raw = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "metadata": meta}
    return kopf.Body(cast(kopf.RawBody, raw))


async def guard(state: OperatorState, key: str) -> list[str]:
    """Put back what was changed in pool `key`'s children (`namespace/name`); a
    Warning Event on the pool names it. Nothing when nothing is rendered for it."""
    async with state.pool_lock(key):  # never between a reconcile's render and its apply
        rendered = state.rendered.get(key)
        if not rendered:
            return []
        reverted = await asyncio.to_thread(_revert_blocking, state.kube, rendered)
    if reverted:
        message = "put back what was changed outside the operator: " + "; ".join(reverted)
        log.warning("pool %s: %s", key, message)
        kopf.warn(_pool_body(rendered), reason=CHILD_REVERTED, message=message)
    return reverted


def due(state: OperatorState, now: float) -> list[str]:
    """The pools whose children are read now (`OperatorState.child_pace`); pools
    with nothing rendered any more (deleted, refused) are forgotten."""
    keys = list(state.rendered)
    state.child_pace.keep(keys)
    return [k for k in keys if state.child_pace.due(k, len(keys), now)]


async def guard_loop(state: OperatorState, clock: Callable[[], float] = time.monotonic) -> None:
    """Guard every pool's children for ever, one pool at a time, within the
    read budget (`child_drift.CHILD_READS_PER_SECOND`) whatever the API
    server's speed. A pool whose check fails is tried again at its next turn."""
    pace = state.child_pace
    spacing = pace.reads_per_pool / pace.reads_per_second
    while True:
        for key in due(state, clock()):
            try:
                await guard(state, key)
            except Exception as exc:  # an API error: this pool's next turn, not the end
                log.warning("pool %s: children not checked: %r", key, exc)
            await asyncio.sleep(spacing)
        await asyncio.sleep(SCAN_SECONDS)


def start_guard(state: OperatorState) -> None:
    """Start the guard's loop once (from a pool handler: kopf posts Events only
    from tasks started within a resource's own, see `handlers.policy`)."""
    if state.child_guard is None:
        state.child_guard = asyncio.get_running_loop().create_task(
            guard_loop(state), name="child-guard"
        )


async def stop_guard(state: OperatorState) -> None:
    task, state.child_guard = state.child_guard, None
    await cancel_task(task)
