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
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import kopf
from pydantic import ValidationError

from mailpipe.contracts.signing import ConfigSigner
from mailpipe.contracts.site_actions import SiteActions
from mailpipe.contracts.topics import Topics
from mailpipe.contracts.warmup import WarmupLedger

from .. import child_drift, defaults, fanout_lease, kafka_io, kube_io, tenancy
from ..cluster_policy import ClusterPolicy
from ..models import KafkaSpec, SendingPoolSpec
from ..pool import PoolRef, topics
from ..relay_pods import PodTrouble
from ..tally import Tally
from ..tls_status import TLSTally

MEMO_KEY = "mailpipe"  # the operator memo's key for OperatorState
TIMERS_MEMO_KEY = "mailpipe_timers"  # OperatorTimers, put there by `mailpipe operator`
ENV_DELETE_GIVE_UP = "MAILPIPE_DELETE_GIVE_UP_SECONDS"
ENV_KAFKA_RETRY = "MAILPIPE_KAFKA_RETRY_SECONDS"
ENV_CANCEL_RETRY = "MAILPIPE_CANCEL_RETRY_SECONDS"


class TimerSettingError(ValueError):
    """An operator timer in the environment that is not a number of seconds >= 0."""


@dataclass(frozen=True)
class OperatorTimers:
    """How long and how often the operator retries what it cannot reach.

    Settings of the operator process, read once at its start
    (`from_env`), and reached through `OperatorState.timers`: the defaults
    are production's; a test shortens them by the operator's environment
    rather than by waiting them out (or patching the code)."""

    delete_give_up_seconds: float = 300.0
    """A deletion handler retries what it cannot reach (Kafka) at most this long,
    then lets the object go with a Warning Event (ARCHITECTURE.md, "Status is the
    world's"): five minutes outlast a broker's restart, not an outage."""
    kafka_retry_seconds: float = 15.0
    """A pool whose Kafka refuses or cannot be reached (topic creation or
    deletion) is retried at this pace: a few requests per pool and retry."""
    cancel_retry_seconds: float = 15.0
    """A campaign deletion whose cancel record Kafka did not take is retried at
    this pace, until `delete_give_up_seconds`."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OperatorTimers:
        """The defaults, with each timer the environment sets; TimerSettingError
        names a value that is not a number of seconds >= 0."""
        names = {
            ENV_DELETE_GIVE_UP: "delete_give_up_seconds",
            ENV_KAFKA_RETRY: "kafka_retry_seconds",
            ENV_CANCEL_RETRY: "cancel_retry_seconds",
        }
        values: dict[str, float] = {}
        for var, attr in names.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            try:
                seconds = float(raw)
            except ValueError:
                seconds = -1.0
            if not seconds >= 0:  # also NaN
                raise TimerSettingError(f"{var}={raw!r}: expected a number of seconds >= 0")
            values[attr] = seconds
        return cls(**values)


@dataclass
class OperatorState:
    """The operator's long-lived in-memory state, one per operator process."""

    hub: kafka_io.EventsHub = field(default_factory=kafka_io.EventsHub)
    """Follows each pool's events topic once; feeds `tally` and `ledgers`."""
    tally: Tally = field(default_factory=Tally)
    """Per-campaign counts of the latest disposition per recipient."""
    producers: kafka_io.Producers = field(default_factory=kafka_io.Producers)
    """One producer per Kafka cluster, shared by control records (a fan-out has its own)."""
    ledgers: dict[str, WarmupLedger] = field(default_factory=dict)
    """Per-IP warm-up of each pool (`namespace/name`), as the relays count it."""
    warmup_sources: dict[str, tuple[str, str]] = field(default_factory=dict)
    """(bootstrap, events topic) each ledger is fed from (`handlers/warmup.py`)."""
    tls: dict[str, TLSTally] = field(default_factory=dict)
    """Per pool (`namespace/name`): the TLS of its attempts, for its status."""
    site_actions: dict[str, SiteActions] = field(default_factory=dict)
    """Per pool (`namespace/name`): its sites suspended or slowed for an IP, for
    its status, as its relays hold them (`contracts.site_actions`)."""
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
    child_pace: child_drift.RecheckPace = field(default_factory=child_drift.RecheckPace)
    """When each pool's children are read again (`handlers.children`): a fixed
    read budget, whatever the number of pools."""
    child_guard: asyncio.Task[None] | None = None
    """The one task that reads every pool's children in turn (`handlers.children`)."""
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

    timers: OperatorTimers = field(default_factory=OperatorTimers)
    """Retry paces and give-up times (`mailpipe operator` reads them from its
    environment, `OperatorTimers.from_env`)."""

    server_views: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """Per pool (`namespace/name`): the spec digest of its relay Deployment as
    last rendered, and the API server's view of that rendering
    (`kube_io.server_view`), so a Deployment event is compared without asking
    the server again. Rebuilt by one dry run per pool after a restart."""

    pod_troubles: dict[str, PodTrouble | None] = field(default_factory=dict)
    """Per pool (`namespace/name`) that may run relays: why its relay pods were
    not available at its last reconcile (None: they were, or were starting).
    `handlers.relays` re-reads the pods of a pool whose relays are missing and
    reconciles it when their trouble is no longer this one."""

    warmup_views: dict[str, Any] = field(default_factory=dict)
    """Per pool (`namespace/name`): the pool as its last event showed it, and when
    the warm-up status loop last looked at it (`handlers.warmup.PoolView`)."""
    warmup_task: asyncio.Task[None] | None = None
    """The one task writing every pool's warm-up status (`handlers.warmup`)."""
    relay_versions: dict[str, str] = field(default_factory=dict)
    """Per pool (`namespace/name`): the resourceVersion of the relay Deployment its
    last reconcile derived its status from (the one it wrote, for a new pool). An
    event of that same version changes nothing: `handlers.relays` and
    `handlers.scale` skip it rather than read the pool and its Deployment again."""

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


def parse_pool_kafka(spec: Any) -> KafkaSpec:
    """Only the Kafka part of a pool's spec, the operator's default bootstrap
    filled in: what the pool's topics are named from and where they live, so
    a pool whose other fields no longer parse (a time zone) can still delete
    them. Raises ValueError (pydantic's ValidationError is one)."""
    kafka = KafkaSpec.model_validate(dict(spec.get("kafka") or {}))
    bootstrap = kafka.bootstrap_servers or defaults.from_process_env().kafka_bootstrap_servers
    if not bootstrap:
        raise ValueError("kafka.bootstrapServers is not set and the operator has no default")
    return kafka.model_copy(update={"bootstrap_servers": bootstrap})


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

    def kafka_refusal(self, policy: ClusterPolicy) -> str | None:
        """Why the operator may not contact this pool's Kafka now, or None: its
        spec does not parse, or `tenancy.kafka_refusal` (the cluster policy
        refuses its bootstrap servers, or its topics are another namespace's)."""
        try:
            spec = self.spec
        except ValidationError as exc:
            return f"pool {self.ref.name}: invalid spec ({exc.error_count()} errors)"
        refused = tenancy.kafka_refusal(self.ref.namespace, self.ref.name, spec.kafka, policy)
        return None if refused is None else f"pool {self.ref.name}: {refused.message}"

    @property
    def bootstrap(self) -> str:
        return self.spec.kafka.bootstrap_servers


def get_pool(kube: kube_io.Kube, namespace: str, name: str) -> Pool | None:
    """The SendingPool `namespace/name`, or None if it does not exist. Blocking."""
    obj = kube.get_custom("sendingpools", namespace, name)
    if obj is None:
        return None
    return Pool(PoolRef(obj["metadata"]["name"], namespace, obj["metadata"]["uid"]), obj)


def pool_waiting(name: str, pool: Pool | None) -> str:
    """Why a campaign waits for pool `name`, in the pool's own words: its Ready
    condition's reason and message (`RelaysUnavailable: 0/2 relays available`),
    not a bare reason, so `kubectl get camp` says what to look at."""
    ready, reason = pool_readiness(pool)
    if pool is None:
        return f"pool {name} does not exist ({reason})"
    if reason == "PoolNotReconciled":
        return f"pool {name} is not reconciled yet ({reason})"
    condition: dict[str, Any] = next(
        (c for c in pool.obj.get("status", {}).get("conditions", []) if c.get("type") == "Ready"),
        {},
    )
    words = f"{reason}: {condition['message']}" if condition.get("message") else reason
    return f"pool {name} is {'Ready' if ready else 'not Ready'}: {words}"


def pool_readiness(pool: Pool | None) -> tuple[bool, str]:
    """(ready, reason) from the pool's Ready condition; a reason even when ready."""
    if pool is None:
        return False, "PoolNotFound"
    for c in pool.obj.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready":
            return c.get("status") == "True", c.get("reason", "PoolNotReady")
    return False, "PoolNotReconciled"


async def cancel_task(task: asyncio.Task[None] | None) -> None:
    """Stop one of the operator-wide tasks (the child guard, the warm-up status
    loop) at shutdown: cancel it and wait for it to end, whatever it raised."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
