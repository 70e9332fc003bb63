"""SendingPool handlers: the one place the operator writes a pool's relay Deployment.

`reconcile` (for create/update/resume, and for the world's changes through
`handlers.relays`): check the spec and the Secrets it references
(`validation`: nothing is applied while a problem stands; each new one is a
Warning Event), render the children with the pure builders in
`mailpipe.operator.pool` (ConfigMap, Deployment, Service, PDB), apply them
(again when the live Deployment drifted), create the pool's topics, then
derive the conditions from what was seen (`status.pool_conditions`: Ready only
with relays available). A pool refused by its tenant's bounds (`tenancy`: the
cluster policy, topics outside its namespace) runs no relay: a relay
Deployment it already has is scaled to 0 and kept (`RelaysStopped`,
`scale.stop_relays`), so the relays come back with the same spec when the pool
or the policy changes; its records wait on Kafka (ARCHITECTURE.md, "Status is the world's"). delete
removes the children and the pool's own topics (unless `spec.kafka.deletionPolicy: Retain`). Per-IP
warm-up status is
`handlers/warmup.py`'s (it only reads).

Over 300 lines because one reconcile is one story: its read of the world, the
blocked path and the rollout share the `_Seen` bookkeeping and the status
patch; deletion, the other story, is at the end.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import kopf

from mailpipe.contracts.signing import ConfigSigner
from mailpipe.contracts.topics import Topics, owned_prefix, owned_topics

from .. import (
    config_signing,
    endpoint_status,
    kafka_io,
    kube_io,
    relay_pods,
    relay_readiness,
    tenancy,
    validation,
)
from ..cluster_policy import ClusterPolicy
from ..kafka_io import KafkaError
from ..kube_io import ApiException
from ..models import GROUP, VERSION, DeletionPolicy, SendingPoolSpec
from ..pool import (
    SPEC_HASH_ANNOTATION,
    PoolRef,
    build_children,
    config_hash,
    drifted,
    secrets_digests,
    secrets_hash,
    stale_children,
    topics,
)
from ..validation import Problem
from .children import start_guard
from .context import OperatorState, operator_state, parse_pool_kafka
from .scale import Stopped, scale_status, stop_relays
from .status import Relays, condition, find, merge_conditions, pool_conditions
from .warmup import first_report

log = logging.getLogger("mailpipe.operator")

# Replaced by Reconciling/Stalled (kstatus); dropped from pools written before.
LEGACY_CONDITIONS = ("Progressing", "Degraded")
DRIFT_PATHS_SHOWN = 3  # an Event names a few drifted fields, not a whole template
RELAYS_STOPPED = "RelaysStopped"  # a refused pool's relays held at 0 (Event and condition reason)
RELAYS_RECOVERED = "RelaysRecovered"  # Event: relay pods in trouble are available again


@kopf.on.create(GROUP, VERSION, "sendingpools")
@kopf.on.update(GROUP, VERSION, "sendingpools")
@kopf.on.resume(GROUP, VERSION, "sendingpools")
async def reconcile_pool(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    assert namespace is not None  # both kinds are namespaced
    state = operator_state(memo)
    start_guard(state)  # the one guard of every pool's children (handlers.children)
    outcome = await reconcile(state, namespace, name, ensure_topics=True)
    if outcome.kafka is not None:
        # Only Kafka is retried: a spec problem waits for an edit or for the
        # referenced Secret (handlers.relays), not for a timer.
        raise kopf.TemporaryError(outcome.kafka.message, delay=state.timers.kafka_retry_seconds)


@dataclass(frozen=True)
class Outcome:
    """What one reconcile saw: the parsed spec (None if invalid) and a Kafka problem."""

    ref: PoolRef | None = None
    spec: SendingPoolSpec | None = None
    kafka: Problem | None = None


@dataclass
class _Seen:
    """The world as one reconcile read it (blocking part), for the loop to report."""

    obj: dict[str, Any]
    outcome: Outcome
    status: dict[str, Any] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    topics_created: list[str] = field(default_factory=list)
    topics_ensured: bool = False  # every topic of the pool is in place now
    rendered: list[dict[str, Any]] = field(default_factory=list)  # every child, as rendered
    stopped_from: int | None = None  # replicas of the relays this reconcile scaled to 0
    trouble: relay_pods.PodTrouble | None = None  # why relay pods are not available
    # resourceVersion of the relay Deployment this status was derived from
    relay_version: str | None = None
    endpoints: dict[str, endpoint_status.Endpoint] = field(default_factory=dict)


async def reconcile(
    state: OperatorState,
    namespace: str,
    name: str,
    *,
    ensure_topics: bool,
    deployment_version: str | None = None,
) -> Outcome:
    """Bring the pool's children to its spec and its status to what the world shows.

    Called for spec changes (`ensure_topics=True`) and for changes in the world
    (the relay Deployment, a referenced Secret: `handlers.relays`), one at a
    time per pool; topics are ensured for a spec change and whenever they were
    not yet for this generation. Nothing is applied while the
    spec or a reference has a problem; each new problem is a Warning Event.

    `deployment_version`: the resourceVersion of the relay Deployment whose
    event asks for this reconcile. Nothing is read or written when the last
    reconcile derived the pool's status from that very version (the event of
    the Deployment it wrote itself): the world it would read is the one it saw.
    """
    key = f"{namespace}/{name}"
    async with state.pool_lock(key):
        if deployment_version is not None and state.relay_versions.get(key) == deployment_version:
            return Outcome()
        seen = await asyncio.to_thread(
            _reconcile_blocking,
            state.kube,
            namespace,
            name,
            ensure_topics,
            state.policy,
            state.admins,
            state.server_views,
            state.signer,
            first_report(state.ledgers.get(key), time.time()),
        )
        # What handlers.children guards: only a pool that may run relays has any.
        if seen is not None and seen.rendered:
            state.rendered[key] = seen.rendered
            state.pod_troubles[key] = seen.trouble  # what handlers.relays compares with
        else:
            state.rendered.pop(key, None)
            state.pod_troubles.pop(key, None)
        if seen is not None and seen.relay_version is not None:
            state.relay_versions[key] = seen.relay_version
        else:
            state.relay_versions.pop(key, None)
    if seen is None:
        return Outcome()
    body = kopf.Body(cast(kopf.RawBody, seen.obj))
    if seen.written:
        message = "updated " + ", ".join(seen.written)
        if seen.drift:
            message += " (drifted: " + ", ".join(seen.drift[:DRIFT_PATHS_SHOWN]) + ")"
        kopf.info(body, reason="Applied", message=message)
    if seen.topics_created:
        kopf.info(body, reason="TopicsCreated", message=", ".join(seen.topics_created))
    spec, ref = seen.outcome.spec, seen.outcome.ref
    if seen.topics_ensured and spec is not None and ref is not None:
        # The events reader reads the pool's events topic without looking for it.
        events, bootstrap = topics(ref, spec).events, spec.kafka.bootstrap_servers
        if events in seen.topics_created:  # made now, so its partitions are the spec's
            state.hub.created(bootstrap, events, spec.kafka.partitions)
        else:
            state.hub.exists(bootstrap, events)
    if seen.stopped_from is not None:
        refused = find(seen.status.get("conditions"), "Ready") or {}
        kopf.warn(
            body,
            reason=RELAYS_STOPPED,
            message=f"relays scaled from {seen.stopped_from} to 0: the pool is refused "
            f"({refused.get('reason')}); its records wait on Kafka until it is allowed",
        )
    _announce(body, seen)
    return seen.outcome


def _announce(body: kopf.Body, seen: _Seen) -> None:
    """Events for what the reconcile changed in the pool's Ready and Reconciling."""
    old_conditions = body.get("status", {}).get("conditions")
    new_conditions = seen.status.get("conditions")
    old_ready = find(old_conditions, "Ready") or {}
    new_ready = find(new_conditions, "Ready") or {}
    changed = _said(old_ready) != _said(new_ready)
    pods = set(relay_pods.PodReason)
    if changed and new_ready.get("status") == "False":
        # A Warning for what needs someone: a problem with the spec, its
        # references or Kafka, relay pods in trouble (an image that cannot be
        # pulled, a crash loop, no node), and relays lost by a Ready pool; not
        # for relays that are still starting.
        stalled = find(new_conditions, "Stalled") or {}
        lost = old_ready.get("status") == "True"
        troubled = seen.trouble is not None
        if stalled.get("status") == "True" or seen.outcome.kafka is not None or lost or troubled:
            kopf.warn(body, reason=new_ready["reason"], message=new_ready["message"])
    elif changed and new_ready.get("status") == "True" and old_ready.get("reason") in pods:
        message = f"{new_ready.get('message')} (was {old_ready.get('reason')})"
        kopf.info(body, reason=RELAYS_RECOVERED, message=message)
    old_rolling = find(old_conditions, "Reconciling") or {}
    new_rolling = find(new_conditions, "Reconciling") or {}
    held = new_ready.get("status") == "True" and new_rolling.get("reason") in pods
    if held and _said(old_rolling) != _said(new_rolling):
        # Relays still available, but a new one cannot start: the rollout is held.
        kopf.warn(body, reason=new_rolling["reason"], message=new_rolling["message"])
    _announce_endpoints(body, seen, old_conditions, new_conditions)


def _announce_endpoints(
    body: kopf.Body,
    seen: _Seen,
    old_conditions: list[dict[str, Any]] | None,
    new_conditions: list[dict[str, Any]] | None,
) -> None:
    """A Warning when an endpoint that was available is not any more (not for one
    still starting), and a Normal Event when all are available (again, or at last)."""
    new = find(new_conditions, endpoint_status.CONDITION)
    if new is None:  # never looked at: the pool was blocked from the start
        return
    old = find(old_conditions, endpoint_status.CONDITION) or {}
    if endpoint_status.lost(body.get("status", {}).get("endpoints"), seen.endpoints):
        kopf.warn(body, reason=new["reason"], message=new["message"])
    elif old.get("status") == "False" and new["status"] == "True":
        message = f"{new['message']} (was {old.get('reason')})"
        kopf.info(body, reason=endpoint_status.AVAILABLE, message=message)


def _said(c: dict[str, Any]) -> tuple[Any, Any]:
    return c.get("reason"), c.get("message")


def _reconcile_blocking(
    kube: kube_io.Kube,
    namespace: str,
    name: str,
    ensure_topics: bool,
    policy: ClusterPolicy,
    admins: kafka_io.Admins,
    views: dict[str, tuple[str, dict[str, Any]]],
    signer: ConfigSigner | None = None,
    warmup: dict[str, Any] | None = None,
) -> _Seen | None:
    obj = kube.get_custom("sendingpools", namespace, name)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return None
    meta, status = obj["metadata"], obj.get("status") or {}
    generation = meta.get("generation")
    if not ensure_topics and status.get("observedGeneration") != generation:
        return None  # a new spec: its own (kopf) reconcile is coming and creates topics first
    ref = PoolRef(name, namespace, meta["uid"])
    spec, problems = validation.check_spec(obj.get("spec") or {})
    refused: list[Problem] = []
    if spec is not None:
        # another tenant's topics, or what the cluster policy does not allow
        refused = tenancy.problems(namespace, name, spec, policy)
        problems += refused
    secrets: dict[str, dict[str, str] | None] = {}
    if spec is not None:
        refs = validation.secret_refs(spec)
        try:
            secrets = {r.name: kube.read_secret(namespace, r.name) for r in refs}
            problems += validation.reference_problems(refs, secrets)
        except ApiException as exc:
            if exc.status != HTTPStatus.FORBIDDEN:
                raise
            problems.append(validation.forbidden_problem("Secret", [r.name for r in refs]))
        bundle = validation.ca_config_map(spec)
        if bundle is not None:
            try:
                data = kube.read_configmap(namespace, bundle[0])
                problems += validation.config_map_problems(*bundle, data)
                # hashed with the Secrets: a new bundle rolls the relays
                secrets[validation.CONFIG_MAP_PREFIX + bundle[0]] = data
            except ApiException as exc:
                if exc.status != HTTPStatus.FORBIDDEN:
                    raise
                problems.append(validation.forbidden_problem("ConfigMap", [bundle[0]]))
    old = [c for c in status.get("conditions") or [] if c.get("type") not in LEGACY_CONDITIONS]
    digest = secrets_hash(secrets) if secrets else None
    if spec is None or problems:
        # A refused pool runs no relay, whatever it ran before: the policy may
        # have been tightened under relays that were allowed (ARCHITECTURE.md, "Status is the
        # world's").
        stopped = None
        if refused:
            try:
                stopped = stop_relays(kube, ref)
            except ApiException as exc:
                if exc.status != HTTPStatus.FORBIDDEN:
                    raise
                problems.append(validation.forbidden_write_problem(namespace, ref.child_name))
        return _blocked(kube, obj, ref, old, status, generation, digest, problems, stopped)
    creds = spec.kafka.credentials_secret_ref  # which optional files its Secret has
    keys = frozenset(secrets.get(creds.name) or {}) if creds is not None else frozenset()
    relay_digest, submission_digest = secrets_digests(spec, secrets)
    text, children = build_children(ref, spec, relay_digest, keys, submission_digest)
    children = config_signing.signed(children, text, signer)
    seen = _Seen(obj, Outcome(ref, spec), rendered=children)
    live = kube.read_deployment(ref)
    # A pool never reconciled whose relay Deployment is absent has no child at
    # all: the relay Deployment is applied before any endpoint child, and
    # observedGeneration is written after them. Its children are then written
    # without a read each first, and no endpoint child is looked for to delete:
    # 12 of the 19 API calls of a new pool's first reconcile, when 1,000 pools
    # created together wait on the API server.
    fresh = live is None and status.get("observedGeneration") is None
    deployment = next(c for c in children if c["kind"] == "Deployment")
    key = f"{namespace}/{name}"
    rerendered = False
    if live is not None:
        rerendered, seen.drift = _drift(kube, views, key, deployment, live)
    # A spec change renders everything; a change in the world (a Deployment or
    # Secret event) only puts back a drifted, re-rendered or deleted Deployment:
    # no reads of the other children for every relay status change. No
    # Deployment at all (a pool that waited for its Secret) needs every child.
    if not ensure_topics and live is not None:
        # A referenced Secret changed: the endpoints mounting it roll too (apply
        # writes only those whose template hash changed).
        rotated = digest != status.get("secretsHash")
        children = [
            c
            for c in children
            if (c is deployment and (seen.drift or rerendered))
            or (rotated and c is not deployment and c["kind"] == "Deployment")
        ]
    try:
        for child in children:
            force = child is deployment and bool(seen.drift)
            stored = kube.apply(child, force=force, absent=fresh)
            if stored is None:
                continue
            seen.written.append(f"{child['kind']}/{child['metadata']['name']}")
            if child is deployment:
                views[key] = (kube_io.spec_digest(deployment), stored)
                if fresh:  # as the API server stored it: what a read now would return
                    live = stored
        if ensure_topics and not fresh:  # a new spec: endpoints whose field was removed go
            for kind, child_name in stale_children(ref, children):
                if kube.delete_child(kind, child_name, namespace):
                    seen.written.append(f"{kind}/{child_name} (deleted)")
    except ApiException as exc:
        if exc.status != HTTPStatus.FORBIDDEN:
            raise
        # RBAC: the namespace is not onboarded (chart value rbac.tenantNamespaces)
        problem = validation.forbidden_write_problem(namespace, f"{child['kind']}/{ref.child_name}")
        return _blocked(kube, obj, ref, old, status, generation, digest, [problem])
    if seen.written and not fresh and live is not None and _deployment_written(seen.written):
        live = kube.read_deployment(ref)  # the controller's view of the new template
    t = topics(ref, spec)
    kafka = None
    topics_ready = find(old, "TopicsReady") or {}
    if topics_ready.get("observedGeneration") != generation or topics_ready.get("status") != "True":
        ensure_topics = True  # not (yet) in place for this generation: stalled or Kafka down
    if ensure_topics:
        try:
            # the submission endpoint's ledger only for a pool that has one
            ledger = [t.submitted] if spec.submission is not None else []
            seen.topics_created = admins.ensure_topics(
                spec.kafka.bootstrap_servers,
                t.all(),
                spec.kafka.partitions,
                spec.kafka.replication_factor,
                t.compacted() + ledger,
            )
            seen.topics_ensured = True
        except KafkaError as exc:
            log.warning("pool %s/%s: topics: %r", namespace, name, exc)  # the full repr: the log
            kafka = validation.kafka_problem(exc, spec.kafka.bootstrap_servers)
    seen.outcome = Outcome(ref, spec, kafka)
    relays = Relays.of(live, spec.replicas)
    if live is not None:
        seen.relay_version = (live.get("metadata") or {}).get("resourceVersion")
    seen.trouble = _pod_trouble(kube, ref, relays)
    conditions = pool_conditions(generation, [], kafka, relays, seen.trouble)
    # The endpoints' own condition: Ready stays the relays' (endpoint_status).
    seen.endpoints = _endpoints(kube, namespace, seen.rendered)
    up, why, message = endpoint_status.decide(seen.endpoints)
    conditions.append(condition(endpoint_status.CONDITION, up, why, message, generation))
    seen.status = {
        "conditions": merge_conditions(old, conditions),
        "configHash": config_hash(text),
        "topics": {"outbound": t.outbound, "events": t.events, "dlq": t.dlq, "delay": t.delay},
        "ipCount": len(spec.egress_ips),
        "secretsHash": digest,  # what handlers.relays compares the Secrets it re-reads with
        "relays": {"desired": relays.desired, "available": relays.available},
        "endpoints": endpoint_status.status_patch(status.get("endpoints"), seen.endpoints),
        # The scale subresource's, from the Deployment just read or written, in
        # this same write: `handlers.scale` then finds nothing to write for it.
        **(scale_status(live) if live is not None else {}),
    }
    if "ips" not in status and warmup is not None:
        seen.status.update(warmup)  # the ledger's first report (`warmup.first_report`)
    elif "warmupSummary" not in status:
        warming = sum(1 for e in spec.egress_ips if e.warmup)
        seen.status["warmupSummary"] = f"{warming} warming" if warming else "warm"
    _patch(kube, seen, status, generation)
    return seen


def _blocked(
    kube: kube_io.Kube,
    obj: dict[str, Any],
    ref: PoolRef,
    old: list[dict[str, Any]],
    status: dict[str, Any],
    generation: int | None,
    digest: str | None,
    problems: list[validation.Problem],
    stopped: Stopped | None = None,
) -> _Seen:
    """Report `problems` as the pool's conditions; nothing (more) is applied.

    `stopped`: the pool is refused and its relays were held at 0 (`scale.stop_relays`)."""
    conditions = pool_conditions(generation, problems, None, None)
    seen = _Seen(obj, Outcome(ref, None))
    if stopped is not None:
        why = "the pool is refused: relays scaled to 0, records wait on Kafka"
        held = condition("RelaysAvailable", False, RELAYS_STOPPED, why, generation)
        conditions = [held if c["type"] == "RelaysAvailable" else c for c in conditions]
        seen.stopped_from = stopped.scaled_from
    seen.status = {"conditions": merge_conditions(old, conditions), "secretsHash": digest}
    if stopped is not None:
        seen.status["relays"] = {"desired": 0, "available": stopped.available}
    _patch(kube, seen, status, generation)
    return seen


def _endpoints(
    kube: kube_io.Kube, namespace: str, rendered: list[dict[str, Any]]
) -> dict[str, endpoint_status.Endpoint]:
    """Each rendered endpoint's availability, from its live Deployment (one GET
    each: a pool without endpoints reads nothing more)."""
    out = {}
    for component, child in endpoint_status.endpoint_deployments(rendered).items():
        live = kube.read_child("Deployment", child["metadata"]["name"], namespace)
        out[component] = endpoint_status.Endpoint.of(int(child["spec"]["replicas"]), live)
    return out


def _pod_trouble(kube: kube_io.Kube, ref: PoolRef, relays: Relays) -> relay_pods.PodTrouble | None:
    """Why relay pods are not available, read from them only when some are not:
    a pool whose relays all run costs no pod list."""
    if not relays.pods_to_explain:
        return None
    try:
        pods = kube.list_relay_pods(ref)
    except ApiException as exc:
        if exc.status != HTTPStatus.FORBIDDEN:
            raise
        # A chart from before pods were read: the count alone, as before.
        log.debug("pool %s/%s: may not list pods: %s", ref.namespace, ref.name, exc.reason)
        return None
    now = datetime.datetime.now(datetime.UTC)
    return relay_pods.diagnose(pods, now, relay_readiness.ask(pods))


def _drift(
    kube: kube_io.Kube,
    views: dict[str, tuple[str, dict[str, Any]]],
    key: str,
    deployment: dict[str, Any],
    live: dict[str, Any],
) -> tuple[bool, list[str]]:
    """(re-rendered, drifted paths) of the live relay Deployment.

    Re-rendered: the live one was applied from another rendering (its spec-hash
    annotation differs), so `Kube.apply` writes it anyway. Otherwise drift is
    what differs from the API server's view of this rendering (`views`, else one
    dry run): compared with the rendering itself, a field the server omits
    (`hostNetwork: false`) looked changed on every Deployment event, and each
    one was re-applied and announced."""
    digest = kube_io.spec_digest(deployment)
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    if annotations.get(SPEC_HASH_ANNOTATION) != digest:
        return True, []
    cached = views.get(key)
    if cached is None or cached[0] != digest:
        cached = views[key] = (digest, kube.server_view(deployment))
    return False, drifted(deployment["spec"], live.get("spec"), "spec", cached[1].get("spec"))


def _deployment_written(written: list[str]) -> bool:
    return any(w.startswith("Deployment/") for w in written)


def _patch(kube: kube_io.Kube, seen: _Seen, status: dict[str, Any], generation: int | None) -> None:
    """Patch what changed, and observedGeneration: this generation was acted on."""
    seen.status["observedGeneration"] = generation
    # merge_conditions keeps transition times while statuses hold, so an
    # unchanged world compares equal and writes nothing.
    changes = {k: v for k, v in seen.status.items() if status.get(k) != v}
    if changes:
        meta = seen.obj["metadata"]
        kube.patch_status("sendingpools", meta["namespace"], meta["name"], changes)


# After deleting its topics, the pool is finalized only once a later look finds
# none: a relay still stopping (or any client asking for their metadata) can
# have the broker re-create a topic (auto.create.topics.enable, on by default).
TOPIC_RECHECK_SECONDS = 5
DELETE_FAILURE_MEMO = "topic_delete_failure"  # per-pool memo: why the last attempt failed


@kopf.on.delete(GROUP, VERSION, "sendingpools")
async def delete_pool(
    name: str,
    namespace: str | None,
    uid: str,
    spec: Any,
    status: Any,
    body: Any,
    memo: kopf.Memo,
    runtime: datetime.timedelta,
    **_: Any,
) -> None:
    """Children first (the relays stop sending), then the pool's own topics
    unless `spec.kafka.deletionPolicy: Retain` or another pool shares them.
    Kafka failures are retried until the give-up time (`OperatorTimers`); a retry that
    starts later lets the pool go with a Warning Event (ARCHITECTURE.md, "Status is the
    world's"). A Kafka the cluster policy refuses is not contacted: the pool goes at once."""
    assert namespace is not None  # both kinds are namespaced
    ref = PoolRef(name, namespace, uid)
    state = operator_state(memo)
    key = f"{namespace}/{name}"
    async with state.pool_lock(key):
        # Out of the child guard's walk first: it would put back what is deleted here.
        state.rendered.pop(key, None)
        state.pod_troubles.pop(key, None)
        state.relay_versions.pop(key, None)
    deleted = await asyncio.to_thread(state.kube.delete_children, ref)
    state.ledgers.pop(key, None)
    state.server_views.pop(key, None)
    log.info("deleted children of pool %s/%s: %s", namespace, name, deleted.deleted)
    if deleted.forbidden:
        # Not onboarded (or no longer): holding the pool would hold its namespace
        # in Terminating for ever, and anything the operator made here before
        # goes with the pool through its ownerReferences.
        message = (
            f"may not delete {', '.join(deleted.forbidden)} in namespace {namespace} "
            "(not onboarded: chart value rbac.tenantNamespaces); any the operator made "
            "go with the pool through their ownerReferences"
        )
        kopf.warn(body, reason="ChildrenLeftToGarbageCollector", message=message)
    try:
        # The topics' names and place only: a pool whose time zone (or any
        # other field) no longer parses still takes the topics it made.
        kafka = parse_pool_kafka(spec)
    except ValueError as exc:
        message = f"spec.kafka unreadable ({validation.one_line(str(exc), 160)}): topics left"
        kopf.warn(body, reason="TopicsKept", message=message)
        return
    refused = tenancy.kafka_refusal(namespace, name, kafka, state.policy)
    if refused is not None:
        # Never contacted, so nothing to delete there (issue 11: a prefix naming
        # another tenant's topics must not delete them either).
        made = bool((status or {}).get("topics"))
        if refused.reason == tenancy.POLICY_VIOLATION and not made:
            message = f"none created: {refused.message}; the operator never connected there"
            kopf.info(body, reason="TopicsKept", message=message)
        else:
            kopf.warn(
                body, reason="TopicsKept", message=f"{refused.message}: topics left as they are"
            )
        return
    prefix = owned_prefix(namespace, name, kafka.topic_prefix)
    bootstrap = kafka.bootstrap_servers
    events = Topics.for_pool(namespace, name, prefix=kafka.topic_prefix).events
    await asyncio.to_thread(state.hub.unfollow, bootstrap, events)
    if kafka.deletion_policy is DeletionPolicy.RETAIN:
        kopf.info(body, reason="TopicsRetained", message="spec.kafka.deletionPolicy is Retain")
        return
    sharing = await asyncio.to_thread(
        state.kube.pools_with_prefix, bootstrap, prefix, namespace, uid
    )
    if sharing:
        kopf.info(body, reason="TopicsKept", message=f"prefix {prefix} shared with {sharing[0]}")
        return
    give_up = state.timers.delete_give_up_seconds
    if runtime.total_seconds() >= give_up:
        why = memo.get(DELETE_FAILURE_MEMO, "no answer from Kafka")
        message = f"gave up after {give_up:.0f}s ({why}): delete {prefix}.* by hand"
        kopf.warn(body, reason="TopicsKept", message=message)
        return
    try:
        gone = await asyncio.to_thread(_delete_pool_topics, bootstrap, prefix)
    except KafkaError as exc:
        message = f"cannot delete topics {prefix}.* on {bootstrap}: {type(exc).__name__}"
        memo[DELETE_FAILURE_MEMO] = message
        raise kopf.TemporaryError(message, delay=state.timers.kafka_retry_seconds) from exc
    if gone:
        kopf.info(body, reason="TopicsDeleted", message=", ".join(gone))
        memo[DELETE_FAILURE_MEMO] = "a client keeps re-creating them"
        raise kopf.TemporaryError("checking no topic comes back", delay=TOPIC_RECHECK_SECONDS)


def _delete_pool_topics(bootstrap: str, prefix: str) -> list[str]:
    """Delete the topics of the pool with `prefix` (those of old delay steps too)."""
    return kafka_io.delete_topics(bootstrap, owned_topics(prefix, kafka_io.list_topics(bootstrap)))
