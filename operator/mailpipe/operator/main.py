"""`mailpipe operator`: run the kopf operator with production settings.

Standalone by default (one replica); `--peering` lets two replicas share the
work safely (kopf's peering: the highest-priority live operator handles
events, the other stands by), which needs the kopf peering CRDs installed.
"""

from __future__ import annotations

import argparse
import logging
import os

import kopf


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
    parser.add_argument("--peering", default=None, help="kopf peering name for several replicas")
    parser.add_argument("--priority", type=int, default=0, help="peering priority of this replica")
    parser.add_argument(
        "--policy",
        default=None,
        help="cluster policy YAML over tenant fields (default: $MAILPIPE_POLICY; none: no limits)",
    )
    parser.add_argument("--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    from . import handlers  # noqa: F401 — registers the handlers
    from .cluster_policy import POLICY_MEMO_KEY, load_policy

    # Read before kopf starts, so a bad policy stops the operator instead of
    # letting it reconcile pools unchecked; every resource memo copies it.
    memo = kopf.Memo()
    memo[POLICY_MEMO_KEY] = load_policy(args.policy)

    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=args.priority,
        liveness_endpoint=liveness,
        memo=memo,
    )
    return 0
