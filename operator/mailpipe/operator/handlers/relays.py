"""The world a SendingPool depends on, watched: its relay Deployment, pods and Secrets.

A pool's status must follow its relays (a crash, a recovery, a manual
`kubectl scale`) and the Secrets it references (a DKIM Secret created late, or
rotated), not only its own spec. Each change here re-runs the pool's
`reconcile` (`handlers.pool`), which reads the Deployment's status into the
conditions, applies back a drifted Deployment (or holds a refused pool's at 0
replicas: a manual scale of it is undone), and rolls the relays when the
data of a referenced Secret changed (its hash is in the pod template).

Deployments are watched by the operator's labels, so only relay and endpoint
Deployments (feedback, unsubscribe, submission) reach these handlers; an
endpoint's status is the pool's `EndpointsReady` (`endpoint_status`).

A relay pod's trouble (ErrImagePull turning into ImagePullBackOff, a container
that starts crash-looping) often changes nothing in its Deployment's status, so
while a pool's relays are missing its pods are re-read on a timer and the pool
reconciled when what they say changed (`relay_pods`); a pool whose relays all
run reads no pod. A timer rather than a watch of pods: the operator then needs
only `list` of pods in the namespaces where it runs relays, not a watch of
every pod in the cluster.

Secrets cannot be watched (the operator may only `get` them by name), so a
timer on each pool that references one re-reads it and reconciles when its
data changed. RBAC cannot be watched either: a pool
refused with `Forbidden` (its namespace not onboarded) is reconciled again on
a timer, so the RoleBinding that onboards it is enough.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from http import HTTPStatus
from typing import Any

import kopf

from .. import endpoint_status, relay_pods, relay_readiness
from ..kube_io import ApiException
from ..models import GROUP, VERSION
from ..pool import MANAGED_BY, PoolRef, secrets_hash
from ..validation import CONFIG_MAP_PREFIX, Reason, config_map_names, secret_names
from . import pool
from .context import OperatorState, operator_state
from .status import find

log = logging.getLogger("mailpipe.operator")

POOL_LABEL = "mailpipe.io/pool"
# Secrets are read by name, never listed or watched (the chart grants `get` only:
# the operator cannot enumerate a namespace's Secrets), so a pool re-reads the
# ones it references at this pace: a created or rotated DKIM key is seen within it.
SECRETS_RECHECK_SECONDS = 10.0
# A namespace onboarded after its pool was created (README: `kubectl create
# rolebinding ...`) creates no event the operator sees: a Forbidden pool tries
# again at this pace. One pool costs a few GETs per try, and only while refused.
FORBIDDEN_RETRY_SECONDS = 5.0
# How late a relay pod's new trouble (or its end) shows on a pool whose relays
# are missing: one pod list per such pool per tick, none for a pool that runs.
PODS_RECHECK_SECONDS = 3.0
# Ready or Reconciling reasons of a pool with relays missing or held up in a rollout.
_PODS_PENDING = frozenset({*relay_pods.PodReason, "RelaysUnavailable", "RollingOut"})


async def sync(
    state: OperatorState,
    namespace: str,
    name: str,
    *,
    ensure_topics: bool = False,
    deployment_version: str | None = None,
) -> None:
    """Reconcile the pool from the world; retry while its Kafka cannot be reached.

    `ensure_topics`: render and apply everything, as for a spec change (a
    cluster policy change that allows a pool never rolled out: `handlers.policy`).
    `deployment_version`: the relay Deployment's resourceVersion an event
    brought (`pool.reconcile` skips one its last reconcile already saw)."""
    version = deployment_version
    while True:
        outcome = await pool.reconcile(
            state, namespace, name, ensure_topics=ensure_topics, deployment_version=version
        )
        if outcome.kafka is None:
            return
        version = None  # a retry reads the world again, whatever version it saw
        await asyncio.sleep(state.timers.kafka_retry_seconds)


async def _sync(
    memo: kopf.Memo, namespace: str, name: str, deployment_version: str | None = None
) -> None:
    await sync(operator_state(memo), namespace, name, deployment_version=deployment_version)


@kopf.on.event(
    "apps",
    "v1",
    "deployments",
    labels={"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": "relay"},
)
async def relay_deployment_changed(
    namespace: str | None, labels: Any, meta: Any, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A relay Deployment changed (status, scale, edit, deletion): the pool follows.

    Not for the version the pool's last reconcile derived its status from (its
    own write of a new pool's Deployment): one reconcile fewer per pool created."""
    name = labels.get(POOL_LABEL)
    if namespace is None or not name:
        return
    version = None if type == "DELETED" else meta.get("resourceVersion")
    await _sync(memo, namespace, name, version)


def _endpoint(value: str | None, **_: Any) -> bool:
    return value is not None and value != endpoint_status.RELAY


@kopf.on.event(
    "apps",
    "v1",
    "deployments",
    labels={"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": _endpoint},
)
async def endpoint_deployment_changed(
    namespace: str | None, labels: Any, memo: kopf.Memo, **_: Any
) -> None:
    """An endpoint Deployment changed (its availability above all): the pool's
    EndpointsReady and status.endpoints follow."""
    name = labels.get(POOL_LABEL)
    if namespace is None or not name:
        return
    await _sync(memo, namespace, name)


def _references_secrets(spec: Any, **_: Any) -> bool:
    return bool(secret_names(spec) or config_map_names(spec))


@kopf.timer(
    GROUP,
    VERSION,
    "sendingpools",
    interval=SECRETS_RECHECK_SECONDS,
    idle=SECRETS_RECHECK_SECONDS,
    when=_references_secrets,
)
async def referenced_secrets(
    name: str, namespace: str | None, spec: Any, status: Any, memo: kopf.Memo, **_: Any
) -> None:
    """A Secret (or CA bundle ConfigMap) the pool references appeared, changed or went:
    re-check and roll its relays.

    One GET per referenced Secret per tick; the full reconcile only runs when
    their digest differs from the one the last reconcile saw (status.secretsHash).
    """
    assert namespace is not None  # both kinds are namespaced
    names, maps = secret_names(spec), config_map_names(spec)
    kube = operator_state(memo).kube

    def read() -> dict[str, dict[str, str] | None]:
        found = {n: kube.read_secret(namespace, n) for n in names}
        found.update({CONFIG_MAP_PREFIX + m: kube.read_configmap(namespace, m) for m in maps})
        return found

    found = await asyncio.to_thread(read)
    if secrets_hash(found) != status.get("secretsHash"):
        await _sync(memo, namespace, name)


def _forbidden(status: Any, **_: Any) -> bool:
    ready = find(status.get("conditions"), "Ready") or {}
    return ready.get("reason") == Reason.FORBIDDEN


@kopf.timer(
    GROUP,
    VERSION,
    "sendingpools",
    interval=FORBIDDEN_RETRY_SECONDS,
    when=_forbidden,
)
async def forbidden_retry(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """The pool was refused by RBAC: try again, as the namespace may be onboarded now."""
    assert namespace is not None  # both kinds are namespaced
    await _sync(memo, namespace, name)


def _relays_missing(status: Any, **_: Any) -> bool:
    conditions = status.get("conditions")
    ready = find(conditions, "Ready") or {}
    rolling = find(conditions, "Reconciling") or {}
    return ready.get("reason") in _PODS_PENDING or (
        rolling.get("status") == "True" and rolling.get("reason") in _PODS_PENDING
    )


@kopf.timer(
    GROUP,
    VERSION,
    "sendingpools",
    interval=PODS_RECHECK_SECONDS,
    when=_relays_missing,
)
async def relay_pods_changed(
    name: str, namespace: str | None, uid: str, memo: kopf.Memo, **_: Any
) -> None:
    """Relays missing: reconcile when their pods tell another story than last time."""
    assert namespace is not None  # both kinds are namespaced
    state = operator_state(memo)
    key = f"{namespace}/{name}"
    if key not in state.pod_troubles:  # not reconciled by this operator (yet)
        await _sync(memo, namespace, name)
        return
    try:
        pods = await asyncio.to_thread(state.kube.list_relay_pods, PoolRef(name, namespace, uid))
    except ApiException as exc:
        if exc.status == HTTPStatus.FORBIDDEN:
            return  # a chart that grants no `list pods`: the count alone (handlers.pool)
        raise
    answers = await asyncio.to_thread(relay_readiness.ask, pods)
    trouble = relay_pods.diagnose(pods, datetime.datetime.now(datetime.UTC), answers)
    if trouble != state.pod_troubles.get(key):
        await _sync(memo, namespace, name)
