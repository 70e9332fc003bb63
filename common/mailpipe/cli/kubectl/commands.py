"""The plugin's subcommands: each reads the cluster and Kafka, calls the pure parts, prints.

Every command returns its exit status: 0 done, 1 the world refused (stuck
objects, nothing to do where something was expected), 2 a usage error
(raised as `UsageError`, printed by `main`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from mailpipe.contracts.kafka_security import KafkaConnection
from mailpipe.contracts.topics import NEVER_MAIL_TOPIC
from mailpipe.contracts.wire import SuppressionReason

from . import kafka_io
from .cluster import FINALIZER, PLURALS, UNPAUSE_ANNOTATION, ApiException, Cluster, PoolTarget
from .records import (
    FATE_HEADERS,
    HELD_HEADERS,
    Entry,
    Held,
    KafkaRecord,
    campaign_key,
    checked_address,
    checked_reason,
    fate_row,
    fates,
    held,
    held_row,
    iso,
    live_suppressions,
    matching,
    origin,
    reply_of,
    scopes,
    selected,
    suppression_record,
    table,
    tombstones,
)
from .targets import campaign_ref, topics_kept_step, unpause_refusal

TOPICS_KEPT = "TopicsKept"  # the operator's Warning when a deleted pool's topics stay
# What the operator says of a deleted pool's topics (handlers/pool.py, delete_pool).
TOPIC_OUTCOMES = frozenset({TOPICS_KEPT, "TopicsDeleted", "TopicsRetained"})
EVENT_SETTLE_SECONDS = 5.0  # the operator posts its Event within a moment of the deletion
POLL_SECONDS = 1.0  # how often a settling uninstall looks at the Events again
ESCAPE_HATCH = (
    "kubectl patch {plural} {name} -n {namespace} --type=merge "
    '-p \'{{"metadata":{{"finalizers":null}}}}\''
)


def _pool(cluster: Cluster, args: argparse.Namespace) -> PoolTarget:
    return cluster.pool(args.namespace, args.pool, args.bootstrap)


def _kafka(pool: PoolTarget, args: argparse.Namespace) -> KafkaConnection:
    """The pool's Kafka, logged in as the plugin's user (`args.kafka_login`, set by `main`)."""
    return KafkaConnection(bootstrap_servers=pool.bootstrap, security=args.kafka_login)


def _entry_row(e: Entry) -> list[str]:
    who = e.address + (f" (list {e.mailing_list})" if e.mailing_list else "")
    return [who, e.reason, iso(e.time), e.source or "-", (e.detail or "-")[:60]]


ENTRY_HEADERS = ("ADDRESS", "REASON", "SINCE", "SOURCE", "DETAIL")


def _entry_json(e: Entry) -> dict[str, Any]:
    return {
        "key": e.key,
        "address": e.address,
        "reason": e.reason,
        "time": e.time,
        "source": e.source,
        "detail": e.detail,
        "list": e.mailing_list,
    }


def suppress(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    pool = _pool(cluster, args)
    reason = SuppressionReason(args.reason)
    records = [suppression_record(a, reason, args.detail, time.time()) for a in args.addresses]
    kafka_io.produce(_kafka(pool, args), pool.topics.suppressions, records)
    for key, _ in records:
        assert key is not None
        print(f"suppressed {key.decode()} ({reason.value}) on {pool.topics.suppressions}", file=out)
    return 0


def unsuppress(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    pool = _pool(cluster, args)
    addresses = [checked_address(a) for a in args.addresses]
    live = live_suppressions(kafka_io.read(_kafka(pool, args), pool.topics.suppressions))
    status = 0
    lifted = []
    for address in addresses:
        entries = matching(address, live)
        if not entries:
            print(f"{address} is not suppressed", file=out)
            status = 1
            continue
        lifted.extend(tombstones(address, live))
        for e in entries:
            print(f"lifted {e.key}: was {e.reason} since {iso(e.time)}", file=out)
    if lifted:
        kafka_io.produce(_kafka(pool, args), pool.topics.suppressions, lifted)
    return status


def suppressions_list(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    if args.reason is not None:
        checked_reason(args.reason)  # before any IO: a typo costs no Kafka read
    pool = _pool(cluster, args)
    live = live_suppressions(kafka_io.read(_kafka(pool, args), pool.topics.suppressions))
    entries = selected(sorted(live.values(), key=lambda e: e.key), args.reason, args.source)
    if args.output == "json":
        json.dump([_entry_json(e) for e in entries], out, indent=2)
        print(file=out)
    elif entries:
        print(table(ENTRY_HEADERS, (_entry_row(e) for e in entries)), file=out)
    else:
        which = " matching" if args.reason or args.source else ""
        print(f"no{which} suppressions on {pool.topics.suppressions}", file=out)
    return 0


def _fate_pools(cluster: Cluster, args: argparse.Namespace) -> tuple[list[PoolTarget], str | None]:
    """The pools whose events tell the fate, and the campaign key it is limited to:
    the campaign's own pool; the pool named; else every pool of the namespace."""
    if not args.campaign:
        if args.pool is not None:
            return [cluster.pool(args.namespace, args.pool, args.bootstrap)], None
        return cluster.pools(args.namespace, args.bootstrap), None
    # The campaign's own pool holds its events, whatever --pool says.
    namespace, name = campaign_ref(args.namespace, args.campaign)
    obj = cluster.campaign(namespace, name)
    campaign = campaign_key(namespace, name)
    own = str((obj.get("spec") or {}).get("poolRef") or "")
    if args.pool is not None and args.pool != own:
        note(f"--pool {args.pool} left aside: campaign {campaign} sends through {own}")
    return [cluster.pool(namespace, own, args.bootstrap)], campaign


def _held_records(
    pools: list[PoolTarget], scope: dict[str, str], args: argparse.Namespace
) -> dict[str, list[KafkaRecord]]:
    """Each suppression topic's records. The never-mail list is the platform's:
    a tenant's login may not read it, which is said, not fatal."""
    by_topic: dict[str, list[KafkaRecord]] = {}
    for topic in scope:
        pool = next(p for p in pools if topic in p.topics.compacted())
        try:
            by_topic[topic] = kafka_io.read(_kafka(pool, args), topic)
        except kafka_io.KafkaFailure as exc:
            if topic != NEVER_MAIL_TOPIC:
                raise
            note(f"the never-mail list {topic} was not read: {exc}")
    return by_topic


def _held_json(h: Held) -> dict[str, Any]:
    return {**_entry_json(h.entry), "topic": h.topic, "scope": h.scope_text}


def fate(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    address = checked_address(args.address)
    pools, campaign = _fate_pools(cluster, args)
    events = []
    for pool in pools:
        events.extend(kafka_io.events_of(_kafka(pool, args), pool.topics.events, address))
    found = fates(events, address, campaign)
    namespace = pools[0].namespace
    scope = scopes(namespace, ((p.name, p.topics) for p in pools))
    suppressed = held(address, _held_records(pools, scope, args), scope)
    if args.output == "json":
        doc = {
            "address": address,
            "pools": [f"{p.namespace}/{p.name}" for p in pools],
            "fates": [
                {
                    "campaign": f.campaign,
                    "disposition": f.last.disposition.value,
                    "final": f.final,
                    "time": f.last.time,
                    "reply": reply_of(f.last),
                    "attempts": [a.model_dump(exclude_none=True) for a in f.attempts],
                    "returned": [
                        {"source": origin(e), **e.model_dump(exclude_none=True)} for e in f.returned
                    ],
                }
                for f in found
            ],
            "suppressed": [_held_json(h) for h in suppressed],
        }
        json.dump(doc, out, indent=2)
        print(file=out)
        return 0
    if found:
        print(table(FATE_HEADERS, (fate_row(e) for f in found for e in f.events)), file=out)
        for f in found:
            print(f"{f.campaign or 'no campaign'}: {f.summary()}", file=out)
    else:
        where = f" in {campaign}" if campaign else ""
        topics = ", ".join(p.topics.events for p in pools)
        print(f"no event for {address}{where} on {topics}", file=out)
    if suppressed:
        print("suppressed now:", file=out)
        print(table(HELD_HEADERS, (held_row(h) for h in suppressed)), file=out)
    else:
        print("suppressed: no", file=out)
    return 0


def unpause_ip(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    """Lift a paused IP's pause (the operator acts on the annotation). Needs no
    Kafka: the pool's egress IPs and their pauses are in the pool itself."""
    obj = cluster.pool_object(args.namespace, args.pool)
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    egress = [str(e.get("address")) for e in spec.get("egressIPs") or []]
    refused = unpause_refusal(args.ip, meta["name"], egress, status.get("ips"))
    if refused is not None:
        warn(refused)
        return 1
    reason = next(i["pausedReason"] for i in status["ips"] if i.get("address") == args.ip)
    print(f"{args.ip} was paused: {reason}", file=out)
    cluster.annotate("sendingpools", meta["namespace"], meta["name"], UNPAUSE_ANNOTATION, args.ip)
    print(
        f"sendingpool.mailpipe.io/{meta['name']} annotated {UNPAUSE_ANNOTATION}={args.ip}", file=out
    )
    return 0


def _scope(args: argparse.Namespace) -> str | None:
    return None if args.all_namespaces else args.namespace


def _describe(plural: str, obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{plural}/{meta['name']} -n {meta['namespace']} (finalizers: {meta.get('finalizers')})"


def uninstall(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    """Delete every Campaign, then every SendingPool, each time waiting until
    the operator has run their finalizers; what is left after `--timeout` is
    listed with the escape hatch (exit 1). What the operator reported it left
    behind while deleting (a pool's topics kept) is listed with the command
    that removes it (exit 1): the objects are gone, not everything they held."""
    scope = _scope(args)
    deadline = time.monotonic() + args.timeout
    deleted: dict[str, tuple[str, dict[str, Any]]] = {}  # uid -> (plural, object)
    for plural in PLURALS:
        for obj in cluster.objects(plural, scope):
            meta = obj["metadata"]
            cluster.delete(plural, meta["namespace"], meta["name"])
            deleted[meta["uid"]] = (plural, obj)
            print(f"deleting {plural}/{meta['name']} -n {meta['namespace']}", file=out)
        left = cluster.wait_gone(plural, scope, deadline, time.monotonic)
        if left:
            print(f"still there after {args.timeout:.0f}s (is the operator running?):", file=out)
            for obj in left:
                meta = obj["metadata"]
                print(f"  {_describe(plural, obj)}", file=out)
                print(
                    "  if the operator is gone for good: "
                    + ESCAPE_HATCH.format(
                        plural=plural, name=meta["name"], namespace=meta["namespace"]
                    ),
                    file=out,
                )
            return 1
    kept = _topics_kept(cluster, scope, deleted)
    if kept is None:
        print(
            "every Campaign and SendingPool is gone; whether the operator kept any topic is"
            " unknown (Events not readable): kubectl get events -A --field-selector"
            f" reason={TOPICS_KEPT}",
            file=out,
        )
        return 1
    steps = [
        (plural, obj, message, step)
        for plural, obj, message in kept
        if (
            step := topics_kept_step(
                obj["metadata"]["namespace"], obj["metadata"]["name"], obj.get("spec") or {}
            )
        )
    ]
    if steps:
        print("every Campaign and SendingPool is gone, but Kafka topics remain:", file=out)
        for plural, obj, message, step in steps:
            meta = obj["metadata"]
            print(f"  {plural}/{meta['name']} -n {meta['namespace']}: {message}", file=out)
            print(f"  {step}", file=out)
        return 1
    print("every Campaign and SendingPool is gone", file=out)
    return 0


def _topics_kept(
    cluster: Cluster, scope: str | None, deleted: dict[str, tuple[str, dict[str, Any]]]
) -> list[tuple[str, dict[str, Any], str]] | None:
    """The deleted pools whose topics the operator kept (its `TopicsKept`
    Warning Event on them), with its message; None if Events are not readable.

    The operator posts its Event about a pool's topics beside removing the
    finalizer, not strictly before, so a pool without one yet is looked at
    again for up to EVENT_SETTLE_SECONDS."""
    pools = {uid: v for uid, v in deleted.items() if v[0] == "sendingpools"}
    settle = time.monotonic() + EVENT_SETTLE_SECONDS
    while True:
        try:
            events = cluster.events_about(scope, "SendingPool")
        except ApiException as exc:
            if exc.status in (401, 403):
                return None
            raise
        about = [e for e in events if (e.get("involvedObject") or {}).get("uid") in pools]
        told = {e["involvedObject"]["uid"] for e in about if e.get("reason") in TOPIC_OUTCOMES}
        if len(told) == len(pools) or time.monotonic() >= settle:
            break
        time.sleep(POLL_SECONDS)
    kept = {
        e["involvedObject"]["uid"]: str(e.get("message") or "")
        for e in about
        if e.get("reason") == TOPICS_KEPT and e.get("type") == "Warning"
    }
    return [(pools[uid][0], pools[uid][1], message) for uid, message in kept.items()]


def release_finalizers(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    """The escape hatch for an operator gone for good: remove its finalizer from
    every mailpipe object already being deleted, and say what that leaves behind."""
    released = 0
    for plural in PLURALS:
        for obj in cluster.objects(plural, _scope(args)):
            meta = obj["metadata"]
            if not meta.get("deletionTimestamp") or not cluster.release(plural, obj):
                continue
            released += 1
            print(
                f"released {plural}/{meta['name']} -n {meta['namespace']} ({FINALIZER})", file=out
            )
            if plural == "sendingpools":
                print(
                    "  left for you: Deployment, ConfigMap, Service, PDB "
                    f"mailpipe-relay-{meta['name']} (garbage-collected"
                    " through their owner reference where a controller-manager"
                    " runs) and the pool's Kafka topics",
                    file=out,
                )
    if not released:
        print("no mailpipe object is waiting on the operator's finalizer", file=out)
    return 0


def warn(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)
