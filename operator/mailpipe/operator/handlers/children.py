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
by name: least privilege), so a timer on each pool reads its three children
by name every `CHILDREN_RECHECK_SECONDS` (less often when the pools together
would read more than `child_drift.CHILD_READS_PER_SECOND`: the reads of
a thousand pools must not crowd out their reconciles) and compares them with
what the last reconcile rendered (`OperatorState.rendered`, `child_drift.changes`). A child
that differs or is gone is applied back (forced) and named in a Warning Event
(`ChildReverted`) with the fields that were changed. A pool that may not run
relays (refused, invalid) has nothing rendered, so nothing of it is put back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf

from .. import child_drift, kube_io
from ..models import GROUP, VERSION
from .context import OperatorState, operator_state

log = logging.getLogger("mailpipe.operator")

CHILDREN_RECHECK_SECONDS = child_drift.RECHECK_FLOOR_SECONDS
CHILD_REVERTED = "ChildReverted"  # the Warning Event's reason
PATHS_SHOWN = 5  # an Event names a few changed fields, not a whole ConfigMap


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


async def guard(
    state: OperatorState, namespace: str, name: str, body: Any, now: float | None = None
) -> list[str]:
    """Put back what was changed in the pool's children; a Warning Event names it.
    Only when the pool is due (`OperatorState.child_pace`); `now`: monotonic seconds."""
    key = f"{namespace}/{name}"
    async with state.pool_lock(key):  # never between a reconcile's render and its apply
        rendered = state.rendered.get(key)
        if not rendered:
            state.child_pace.forget(key)
            return []
        if not state.child_pace.due(
            key, len(state.rendered), time.monotonic() if now is None else now
        ):
            return []
        reverted = await asyncio.to_thread(_revert_blocking, state.kube, rendered)
    if reverted:
        message = "put back what was changed outside the operator: " + "; ".join(reverted)
        log.warning("pool %s: %s", key, message)
        kopf.warn(body, reason=CHILD_REVERTED, message=message)
    return reverted


@kopf.timer(GROUP, VERSION, "sendingpools", interval=CHILDREN_RECHECK_SECONDS)
async def children_as_rendered(
    name: str, namespace: str | None, body: Any, memo: kopf.Memo, **_: Any
) -> None:
    assert namespace is not None  # SendingPools are namespaced
    await guard(operator_state(memo), namespace, name, body)
