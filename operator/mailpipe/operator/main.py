"""`mailpipe operator`: run the kopf operator with production settings.

Standalone by default (one replica); `--peering` lets two replicas share the
work safely (kopf's peering: the highest-priority live operator handles
events, the other stands by), which needs the kopf peering CRDs and the
peering object (the chart installs both with `peering.enabled`). Replicas of
one Deployment share their arguments, and kopf pauses *every* operator when
two have the same priority, so without `--priority` each replica draws its own.

`--metrics-port` serves the operator's Prometheus metrics (`metrics`).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets

import kopf

# Peering priorities drawn by replicas without --priority: wide enough that two
# replicas practically never draw the same one (kopf would pause both).
PRIORITY_SPAN = 2**31


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    parser.add_argument(
        "--liveness-port",
        type=int,
        default=int(os.environ.get("MAILPIPE_LIVENESS_PORT", "8080")),
        help="port of the /healthz endpoint (0: none)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("MAILPIPE_METRICS_PORT", "0")),
        help="port of the Prometheus /metrics endpoint (0: none)",
    )
    parser.add_argument(
        "--listen-address",
        default=os.environ.get("MAILPIPE_LISTEN_ADDRESS", "0.0.0.0"),
        help="address the /healthz and /metrics endpoints bind (default: every address of"
        " the pod's own network namespace, where the kubelet and Prometheus reach it)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--peering", default=None, help="kopf peering name for several replicas")
    mode.add_argument(
        "--standalone", action="store_true", help="the only replica: no peering (the default)"
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority of this replica (default: drawn at random)",
    )
    parser.add_argument(
        "--policy",
        default=None,
        help="cluster policy YAML over tenant fields (default: $MAILPIPE_POLICY; none: no"
        " limits); re-read while running, a change reaches every pool within seconds",
    )
    parser.add_argument("--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # importing registers the handlers (metrics: its watch-event handlers)
    from . import handlers, kafka_identity, metrics  # noqa: F401
    from .cluster_policy import (
        POLICY_FILE_MEMO_KEY,
        POLICY_MEMO_KEY,
        PolicyFile,
        load_policy,
        policy_path,
    )

    # Read before kopf starts, so a bad policy stops the operator instead of
    # letting it reconcile pools unchecked; every resource memo copies it.
    # The file is then re-read while the operator runs (handlers.policy).
    memo = kopf.Memo()
    path = policy_path(args.policy)
    if path is None:
        memo[POLICY_MEMO_KEY] = load_policy(None)  # unrestricted, with a warning
    else:
        source = PolicyFile.open(path)
        memo[POLICY_MEMO_KEY] = source.policy
        memo[POLICY_FILE_MEMO_KEY] = source
    # Likewise the operator's Kafka login (MAILPIPE_KAFKA_*): a bad one stops it here.
    logging.getLogger("mailpipe.operator").info("Kafka login: %s", kafka_identity.security())

    if args.metrics_port:
        metrics.serve(args.metrics_port, args.listen_address)
    priority = args.priority
    if priority is None:
        priority = secrets.randbelow(PRIORITY_SPAN) if args.peering else 0
    # kopf's health server (aiohttp: async, this one path, 404 elsewhere).
    host = f"[{args.listen_address}]" if ":" in args.listen_address else args.listen_address
    liveness = f"http://{host}:{args.liveness_port}/healthz" if args.liveness_port else None
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=priority,
        liveness_endpoint=liveness,
        memo=memo,
    )
    return 0
