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
from mailpipe.contracts.wire import SuppressionReason

from . import kafka_io
from .cluster import FINALIZER, PLURALS, UNPAUSE_ANNOTATION, Cluster, PoolTarget
from .records import (
    Entry,
    UsageError,
    campaign_key,
    checked_address,
    fates,
    iso,
    live_suppressions,
    matching,
    reply_of,
    suppression_record,
    table,
    tombstones,
)

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
    return [e.address, e.reason, iso(e.time), e.source or "-", (e.detail or "-")[:60]]


ENTRY_HEADERS = ("ADDRESS", "REASON", "SINCE", "SOURCE", "DETAIL")


def _entry_json(e: Entry) -> dict[str, Any]:
    return {
        "key": e.key,
        "address": e.address,
        "reason": e.reason,
        "time": e.time,
        "source": e.source,
        "detail": e.detail,
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
    pool = _pool(cluster, args)
    live = live_suppressions(kafka_io.read(_kafka(pool, args), pool.topics.suppressions))
    entries = sorted(live.values(), key=lambda e: e.key)
    if args.reason:
        entries = [e for e in entries if e.reason == args.reason]
    if args.output == "json":
        json.dump([_entry_json(e) for e in entries], out, indent=2)
        print(file=out)
    elif entries:
        print(table(ENTRY_HEADERS, (_entry_row(e) for e in entries)), file=out)
    else:
        print(f"no suppressions on {pool.topics.suppressions}", file=out)
    return 0


def fate(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    address = checked_address(args.address)
    campaign = campaign_key(args.namespace, args.campaign) if args.campaign else None
    pool_name = args.pool
    if pool_name is None and args.campaign and "/" not in args.campaign:
        pool_name = cluster.campaign_pool(args.namespace, args.campaign)
    pool = cluster.pool(args.namespace, pool_name, args.bootstrap)
    found = fates(
        kafka_io.events_of(_kafka(pool, args), pool.topics.events, address), address, campaign
    )
    suppressed = matching(
        address, live_suppressions(kafka_io.read(_kafka(pool, args), pool.topics.suppressions))
    )
    if args.output == "json":
        doc = {
            "address": address,
            "pool": f"{pool.namespace}/{pool.name}",
            "fates": [
                {
                    "campaign": f.campaign,
                    "disposition": f.last.disposition.value,
                    "final": f.final,
                    "time": f.last.time,
                    "reply": reply_of(f.last),
                    "attempts": [a.model_dump(exclude_none=True) for a in f.attempts],
                }
                for f in found
            ],
            "suppressed": [_entry_json(e) for e in suppressed],
        }
        json.dump(doc, out, indent=2)
        print(file=out)
        return 0
    if found:
        rows = [
            [
                iso(a.time),
                a.campaign or a.message_id,
                a.disposition.value,
                str(a.attempt),
                a.egress_ip or "-",
                reply_of(a)[:100],
            ]
            for f in found
            for a in f.attempts
        ]
        print(
            table(["TIME", "CAMPAIGN", "DISPOSITION", "ATTEMPT", "EGRESS", "REPLY"], rows), file=out
        )
        for f in found:
            print(f"{f.campaign or 'no campaign'}: {f.summary()}", file=out)
    else:
        where = f" in {campaign}" if campaign else ""
        print(f"no event for {address}{where} on {pool.topics.events}", file=out)
    for e in suppressed:
        print(
            f"suppressed: {e.reason} since {iso(e.time)} ({e.source or 'unknown source'})", file=out
        )
    if not suppressed:
        print("suppressed: no", file=out)
    return 0


def unpause_ip(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    pool = _pool(cluster, args)
    addresses = [e.address for e in pool.spec.egress_ips]
    if args.ip not in addresses:
        raise UsageError(
            f"{args.ip} is not an egress IP of sendingpool {pool.name} ({', '.join(addresses)})"
        )
    for ip in pool.obj.get("status", {}).get("ips", []):
        if ip.get("address") == args.ip and ip.get("pausedReason"):
            print(f"{args.ip} was paused: {ip['pausedReason']}", file=out)
    cluster.annotate("sendingpools", pool.namespace, pool.name, UNPAUSE_ANNOTATION, args.ip)
    print(f"sendingpool.mailpipe.io/{pool.name} annotated {UNPAUSE_ANNOTATION}={args.ip}", file=out)
    return 0


def _scope(args: argparse.Namespace) -> str | None:
    return None if args.all_namespaces else args.namespace


def _describe(plural: str, obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{plural}/{meta['name']} -n {meta['namespace']} (finalizers: {meta.get('finalizers')})"


def uninstall(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    """Delete every Campaign, then every SendingPool, each time waiting until
    the operator has run their finalizers; what is left after `--timeout` is
    listed with the escape hatch (exit 1)."""
    scope = _scope(args)
    deadline = time.monotonic() + args.timeout
    for plural in PLURALS:
        for obj in cluster.objects(plural, scope):
            meta = obj["metadata"]
            cluster.delete(plural, meta["namespace"], meta["name"])
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
    print("every Campaign and SendingPool is gone", file=out)
    return 0


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
