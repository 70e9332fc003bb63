"""What the handler modules share: the operator's in-memory state, and a pool read from the API.

State lives in kopf's memo, not in module globals: the startup handler puts one
`OperatorState` into the operator memo, and kopf shallow-copies that memo into
every resource's memo, so all handlers of all objects reach the same instance
through their `memo` kwarg (`operator_state(memo)`). Per-object flags live in
the object's own memo and go with the object.

Everything here is rebuilt after a restart: counts and warm-up from the events
topic, fan-out progress from the Campaign's status.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import kopf

from mailpipe.contracts.signing import ConfigSigner
from mailpipe.contracts.topics import Topics
from mailpipe.contracts.warmup import WarmupLedger

from .. import defaults, fanout_lease, kafka_io, kube_io
from ..cluster_policy import ClusterPolicy
from ..models import SendingPoolSpec
from ..pool import PoolRef, topics
from ..tally import Tally

MEMO_KEY = "mailpipe"  # the operator memo's key for OperatorState
# A deletion handler retries what it cannot reach (Kafka) at most this long, then
# lets the object go with a Warning Event (ARCHITECTURE.md, "Status is the world's"). Tests
# shorten it through the environment.
DELETE_GIVE_UP_SECONDS = float(os.environ.get("MAILPIPE_DELETE_GIVE_UP_SECONDS", "300"))


@dataclass
class OperatorState:
    """The operator's long-lived in-memory state, one per operator process."""

    hub: kafka_io.EventsHub = field(default_factory=kafka_io.EventsHub)
    """Follows each pool's events topic once; feeds `tally` and `ledgers`."""
    tally: Tally = field(default_factory=Tally)
    """Per-campaign counts of the latest disposition per recipient."""
    producers: kafka_io.Producers = field(default_factory=kafka_io.Producers)
    """One producer per Kafka cluster, shared by fan-outs and control records."""
    ledgers: dict[str, WarmupLedger] = field(default_factory=dict)
    """Per-IP warm-up of each pool (`namespace/name`), as the relays count it."""
    warmup_sources: dict[str, tuple[str, str]] = field(default_factory=dict)
    """(bootstrap, events topic) each ledger is fed from (`handlers/warmup.py`)."""
    policy: ClusterPolicy = field(default_factory=ClusterPolicy)
    """The platform's cluster policy (`mailpipe operator --policy`); restrictive
    by default so a wiring slip fails closed."""
    pools: set[str] = field(default_factory=set)
    """Every pool (`namespace/name`) this operator watches: those a cluster
    policy change re-checks (`handlers.policy`)."""
    policy_task: asyncio.Task[None] | None = None
    """The task re-reading the mounted policy file (`handlers.policy`), if any."""
    signer: ConfigSigner | None = None
    """Signs every relay config rendered (`config_signing`); None: unsigned (dev)."""
    rendered: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """The children last rendered for each pool (`namespace/name`) that may run
    relays: what `handlers.children` puts back when one is edited or deleted.
    A refused or invalid pool has none, so nothing of it is put back."""
    process: fanout_lease.Holder = field(
        default_factory=lambda: fanout_lease.this_process(time.time())
    )
    """This operator as a fan-out's holder (pod, pid, start): what it writes in the
    checkpoints it produces, so another operator, even in the same process, is
    someone else."""
    kube: kube_io.Kube = field(default_factory=kube_io.Kube)
    """The Kubernetes API client every handler calls through (made on first use)."""
    admins: kafka_io.Admins = field(default_factory=kafka_io.Admins)
    """At most two admin clients per Kafka cluster, shared by every reconcile's
    topic creation (`kafka_io.Admins`)."""
    retries: set[asyncio.Task[None]] = field(default_factory=set)
    """Retry tasks a cluster policy change started (`handlers.policy`), referenced
    until done and cancelled at shutdown."""
    pool_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    """One lock per pool (`namespace/name`): its reconciles (spec, Deployment, Secret
    events) read the world and patch status one at a time, so none overwrites a
    newer reading with an older one."""

    def pool_lock(self, key: str) -> asyncio.Lock:
        return self.pool_locks.setdefault(key, asyncio.Lock())


def operator_state(memo: kopf.Memo) -> OperatorState:
    """The state the startup handler put into the operator memo."""
    state = memo.get(MEMO_KEY)
    if not isinstance(state, OperatorState):
        raise RuntimeError("operator state missing from kopf's memo: did the startup handler run?")
    return state


def parse_pool_spec(spec: Any) -> SendingPoolSpec:
    """A SendingPool's spec as the typed model, unset fields filled with the
    operator's defaults (`defaults`); raises pydantic's ValidationError."""
    return SendingPoolSpec.model_validate(dict(spec), context=defaults.from_process_env().context())


@dataclass(frozen=True)
class Pool:
    """A SendingPool as read from the API.

    Identity and readiness come from metadata and status; the spec is parsed
    on first use (raising ValidationError), so a waiting campaign can report
    an invalid pool's readiness without parsing it.
    """

    ref: PoolRef
    obj: dict[str, Any]

    @cached_property
    def spec(self) -> SendingPoolSpec:
        return parse_pool_spec(self.obj["spec"])

    @property
    def topics(self) -> Topics:
        return topics(self.ref, self.spec)

    @property
    def bootstrap(self) -> str:
        return self.spec.kafka.bootstrap_servers


def get_pool(kube: kube_io.Kube, namespace: str, name: str) -> Pool | None:
    """The SendingPool `namespace/name`, or None if it does not exist. Blocking."""
    obj = kube.get_custom("sendingpools", namespace, name)
    if obj is None:
        return None
    return Pool(PoolRef(obj["metadata"]["name"], namespace, obj["metadata"]["uid"]), obj)


def pool_readiness(pool: Pool | None) -> tuple[bool, str]:
    """(ready, reason) from the pool's Ready condition; a reason even when ready."""
    if pool is None:
        return False, "PoolNotFound"
    for c in pool.obj.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready":
            return c.get("status") == "True", c.get("reason", "PoolNotReady")
    return False, "PoolNotReconciled"
