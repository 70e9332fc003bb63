"""`mailpipe operator`: run the kopf operator with production settings.

Standalone by default (one replica); `--peering` lets two replicas share the
work safely (kopf's peering: the highest-priority live operator handles
events, the other stands by), which needs the kopf peering CRDs and the
peering object (the chart installs both with `peering.enabled`). Replicas of
one Deployment share their arguments, and kopf pauses *every* operator when
two have the same priority, so without `--priority` each replica derives its
own from its start time (`seniority_priority`): the earlier replica has the
higher one, so a replica that starts (a rolling update's new pod) stands by
and never preempts one that is working; a random tie-break separates two
that start in the same millisecond.

Hand-over (README, "High availability"): a replica that stops cleanly removes
itself from the peering object, and the standby resumes within seconds; one
that dies (SIGKILL, node loss) stops renewing its keep-alive, and the standby
resumes once that keep-alive is older than `--peering-lifetime` seconds.
Every peering replica starts paused (kopf pre-activates the pause when
peering is mandatory) and kopf logs only the changes of that state, so a
replica that never became active logs no pause at all: `run` says so itself.

`--metrics-port` serves the operator's Prometheus metrics (`metrics`).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time

import kopf

log = logging.getLogger("mailpipe.operator")

# Seniority priorities: -(start in ms * TIE_SPAN + a random tie-break below
# TIE_SPAN). Two replicas of the same millisecond draw the same tie-break
# (kopf would pause both) about once in a million; the values fit the int64 a
# Kubernetes object holds until the year 2248 (2**63 / 2**20 ms).
TIE_SPAN = 2**20
# How long a replica's keep-alive in the peering object stays valid: the
# longest a crashed active replica holds its standby back. kopf renews it
# 5-10 s before it expires (kopf/_core/engines/peering.py, keepalive: `lifetime
# - random.randint(5, 10)`), so under ~15 s the renewals only come more often
# without a wider margin. kopf's own default is 60 s; 30 s halves the wait.
PEERING_LIFETIME_SECONDS = 30


def seniority_priority(started_ns: int, tie_break: int) -> int:
    """kopf peering priority of a replica started at `started_ns` (epoch ns):
    higher for an earlier start; `tie_break` in [0, TIE_SPAN) orders equal starts."""
    if not 0 <= tie_break < TIE_SPAN:
        raise ValueError(f"tie_break {tie_break} outside [0, {TIE_SPAN})")
    return -(started_ns // 1_000_000 * TIE_SPAN + tie_break)


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
        help="peering priority of this replica (default: from its start time, earlier higher)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=int(os.environ.get("MAILPIPE_PEERING_LIFETIME", str(PEERING_LIFETIME_SECONDS))),
        help="seconds a replica's peering keep-alive stays valid: the longest a crashed"
        f" active replica holds the standby back (default {PEERING_LIFETIME_SECONDS})",
    )
    parser.add_argument(
        "--policy",
        default=None,
        help="cluster policy YAML over tenant fields (default: $MAILPIPE_POLICY; none: no"
        " limits); re-read while running, a change reaches every pool within seconds",
    )
    parser.add_argument(
        "--config-signing-key",
        default=None,
        help="PEM Ed25519 private key the operator signs every relay config with (default:"
        " $MAILPIPE_CONFIG_SIGNING_KEY_FILE); relays refuse a config without its signature",
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
    # Likewise the key relay configs are signed with: a bad one stops it here.
    from .config_signing import SIGNER_MEMO_KEY, load_signer, signing_key_path

    memo[SIGNER_MEMO_KEY] = load_signer(signing_key_path(args.config_signing_key))
    # Likewise the operator's Kafka login (MAILPIPE_KAFKA_*): a bad one stops it here.
    logging.getLogger("mailpipe.operator").info("Kafka login: %s", kafka_identity.security())

    # Likewise its timers (MAILPIPE_*_SECONDS): a bad value stops it here, in one line.
    from .handlers.context import TIMERS_MEMO_KEY, OperatorTimers, TimerSettingError

    try:
        memo[TIMERS_MEMO_KEY] = OperatorTimers.from_env(os.environ)
    except TimerSettingError as exc:
        print(f"mailpipe operator: {exc}", file=sys.stderr)
        return 2

    if args.metrics_port:
        metrics.serve(args.metrics_port, memo, args.listen_address)
    priority = args.priority
    if priority is None:
        priority = (
            seniority_priority(time.time_ns(), secrets.randbelow(TIE_SPAN)) if args.peering else 0
        )
    # kopf's health server (aiohttp: async, this one path, 404 elsewhere).
    host = f"[{args.listen_address}]" if ":" in args.listen_address else args.listen_address
    liveness = f"http://{host}:{args.liveness_port}/healthz" if args.liveness_port else None
    settings = kopf.OperatorSettings()
    settings.peering.lifetime = args.peering_lifetime
    if args.peering:
        log.info(
            "peering %r as %s, priority %d, keep-alive lifetime %d s: paused until no live"
            " peer has a higher priority (kopf then logs 'Resuming operations')",
            args.peering,
            os.environ.get("POD_ID", "this process"),
            priority,
            args.peering_lifetime,
        )
    kopf.run(
        settings=settings,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=priority,
        liveness_endpoint=liveness,
        memo=memo,
    )
    return 0
