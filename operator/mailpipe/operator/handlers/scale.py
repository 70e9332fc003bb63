"""The scale subresource's status: a SendingPool's relay replicas and pod selector.

`kubectl scale sp <pool> --replicas=N` writes `spec.replicas` through the
CRD's scale subresource (`crdgen`: specReplicasPath); the pool handler rolls
it out to the relay Deployment. What the scale subresource reads back
(`status.replicas`, `status.selector`, for kubectl and an HPA) is the relay
Deployment's own, so this handler copies them onto the owning pool whenever
the Deployment changes.

It also holds a refused pool's relays at 0 (`stop_relays`, called by the pool
reconcile): a pool its tenant's bounds refuse (the cluster policy, tightened
under running relays) keeps its Deployment, scaled to 0, so nothing sends and
the same relays come back when it is allowed. Every writer of the scale goes
through the pool reconcile, so none fights another: `kubectl scale sp` sets
spec.replicas, which a refused pool does not roll out; a manual `kubectl
scale` of the Deployment is an event that reconciles the pool, which puts it
back (to 0 for a refused pool, to spec.replicas otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from .. import kube_io
from ..kube_io import ApiException
from ..pool import MANAGED_BY, PoolRef
from .context import operator_state


def selector_text(match_labels: Mapping[str, str]) -> str:
    """A label selector in its serialized form ('a=b,c=d', sorted), as the
    scale subresource's labelSelectorPath wants it."""
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))


def scale_status(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """The pool's scale status from its relay Deployment's spec and status."""
    labels = deployment.get("spec", {}).get("selector", {}).get("matchLabels", {})
    return {
        "replicas": int(deployment.get("status", {}).get("replicas") or 0),
        "selector": selector_text(labels),
    }


@dataclass(frozen=True)
class Stopped:
    """A refused pool's relay Deployment, held at 0 replicas."""

    scaled_from: int | None  # its replicas when it was scaled down just now; None: was 0
    available: int  # relays its controller still reports available (terminating)


def running_replicas(deployment: Mapping[str, Any] | None) -> int:
    """The replicas a live relay Deployment asks for (0 when there is none)."""
    if deployment is None:
        return 0
    replicas = (deployment.get("spec") or {}).get("replicas")
    return 1 if replicas is None else int(replicas)  # the API's default is 1


def stop_relays(kube: kube_io.Kube, ref: PoolRef) -> Stopped | None:
    """Hold the pool's relay Deployment at 0 replicas; None when it has none. Blocking."""
    live = kube.read_deployment(ref)
    if live is None:
        return None  # never rolled out: nothing runs
    replicas = running_replicas(live)
    if replicas:
        kube.scale_deployment(ref, 0)
    available = int((live.get("status") or {}).get("availableReplicas") or 0)
    return Stopped(replicas or None, available)


def owning_pool(meta: Mapping[str, Any]) -> str | None:
    """Name of the SendingPool that controls an object, from its owner references."""
    for ref in meta.get("ownerReferences", []):
        if ref.get("kind") == "SendingPool" and ref.get("controller"):
            return str(ref["name"])
    return None


def _patch_pool(kube: kube_io.Kube, namespace: str, pool: str, wanted: dict[str, Any]) -> None:
    live = kube.get_custom("sendingpools", namespace, pool)
    if live is None or live.get("metadata", {}).get("deletionTimestamp"):
        return
    status = live.get("status") or {}
    if all(status.get(k) == v for k, v in wanted.items()):
        return
    try:
        kube.patch_status("sendingpools", namespace, pool, wanted)
    except ApiException as exc:
        if exc.status != 404:  # deleted meanwhile: nothing to report on
            raise


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
async def relay_deployment_scale(
    body: Any, meta: Any, namespace: str | None, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    pool = owning_pool(meta)
    if namespace is None or pool is None or type == "DELETED":
        return
    state = operator_state(memo)
    key = f"{namespace}/{pool}"
    async with state.pool_lock(key):  # after a reconcile that is writing this Deployment
        if state.relay_versions.get(key) == meta.get("resourceVersion"):
            return  # that reconcile wrote this version's scale status with its own
    await asyncio.to_thread(_patch_pool, state.kube, namespace, pool, scale_status(body))
