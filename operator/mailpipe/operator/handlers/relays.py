"""The world a SendingPool depends on, watched: its relay Deployment and its Secrets.

A pool's status must follow its relays (a crash, a recovery, a manual
`kubectl scale`) and the Secrets it references (a DKIM Secret created late, or
rotated), not only its own spec. Each change here re-runs the pool's
`reconcile` (`handlers.pool`), which reads the Deployment's status into the
conditions, applies back a drifted Deployment, and rolls the relays when the
data of a referenced Secret changed (its hash is in the pod template).

Deployments are watched by the operator's labels, so only relay Deployments
reach these handlers. Secrets are matched to pools through a kopf index of
the Secret names each pool's spec references; other Secrets cost a dict look-up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from ..models import GROUP, VERSION
from ..pool import MANAGED_BY
from ..validation import secret_names
from . import pool
from .context import operator_state

log = logging.getLogger("mailpipe.operator")

POOL_LABEL = "mailpipe.io/pool"


async def _sync(memo: kopf.Memo, namespace: str, name: str) -> None:
    """Reconcile the pool from the world; retry while its Kafka cannot be reached."""
    state = operator_state(memo)
    while True:
        outcome = await pool.reconcile(state, namespace, name, ensure_topics=False)
        if outcome.kafka is None:
            return
        await asyncio.sleep(pool.KAFKA_RETRY_SECONDS)


@kopf.on.event(
    "apps",
    "v1",
    "deployments",
    labels={"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": "relay"},
)
async def relay_deployment_changed(
    namespace: str | None, labels: Any, memo: kopf.Memo, **_: Any
) -> None:
    """A relay Deployment changed (status, scale, edit, deletion): the pool follows."""
    name = labels.get(POOL_LABEL)
    if namespace is None or not name:
        return
    await _sync(memo, namespace, name)


@kopf.index(GROUP, VERSION, "sendingpools")
def pool_secrets(namespace: str | None, name: str, spec: Any, **_: Any) -> dict[Any, str]:
    """(namespace, Secret name) -> the pools that reference it."""
    return {(namespace, secret): name for secret in secret_names(spec)}


@kopf.on.event("", "v1", "secrets")
async def referenced_secret_changed(
    namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any
) -> None:
    """A Secret a pool references appeared, changed or went: re-check and roll its relays."""
    index: kopf.Index[Any, str] = kwargs["pool_secrets"]  # kopf passes indices by name
    for pool_name in list(index.get((namespace, name), [])):
        assert namespace is not None
        await _sync(memo, namespace, pool_name)
