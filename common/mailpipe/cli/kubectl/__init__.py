"""`kubectl mailpipe`: day-2 actions on a mailpipe installation, as a kubectl plugin.

Installed as the `kubectl-mailpipe` executable (pyproject entry point), which
kubectl finds on PATH (`kubectl mailpipe ...`), as cert-manager's `cmctl` or
CloudNativePG's `kubectl cnpg`. The user names a namespace and a pool; the
plugin reads the pool's Kafka and topics from the SendingPool itself:

    kubectl mailpipe suppress a@example.com --pool news -n mail
    kubectl mailpipe unsuppress a@example.com --pool news -n mail
    kubectl mailpipe suppressions list --pool news -n mail
    kubectl mailpipe fate a@example.com --campaign spring -n mail
    kubectl mailpipe unpause-ip 203.0.113.7 --pool news -n mail
    kubectl mailpipe uninstall --all-namespaces       # the chart's pre-delete hook runs this
    kubectl mailpipe release-finalizers -n mail       # the escape hatch: the operator is gone

`--pool` may be left out when the namespace has one pool. `--bootstrap`
(or MAILPIPE_KAFKA_BOOTSTRAP) replaces the pool's Kafka address when the
plugin runs where that address does not resolve (outside the cluster).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from kafka.errors import KafkaError
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from mailpipe.contracts.wire import SuppressionReason

from . import commands
from .cluster import Cluster
from .records import UsageError

Command = Callable[[Cluster, argparse.Namespace, TextIO], int]
UNINSTALL_TIMEOUT_SECONDS = 300.0  # finalizers of hundreds of pools: topic deletions, one by one


def _common() -> argparse.ArgumentParser:
    """Options every subcommand takes, before or after its name (kubectl passes
    a plugin its arguments as typed). SUPPRESS: a subcommand's copy never
    overwrites a value given before it."""
    p = argparse.ArgumentParser(add_help=False)
    s = argparse.SUPPRESS
    p.add_argument("-n", "--namespace", default=s, help="namespace (default: the context's)")
    p.add_argument("--context", default=s, help="kubeconfig context")
    p.add_argument("--kubeconfig", default=s, help="kubeconfig file")
    p.add_argument("--pool", default=s, help="SendingPool (default: the namespace's only one)")
    p.add_argument("--bootstrap", default=s, help="Kafka bootstrap servers instead of the pool's")
    p.add_argument("-o", "--output", choices=["table", "json"], default=s, help="output format")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="kubectl mailpipe", description=__doc__.splitlines()[0], parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, run: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, parents=[common])
        p.set_defaults(_run=run)
        return p

    reasons = [r.value for r in SuppressionReason]
    p = add("suppress", commands.suppress, "suppress addresses (no mail is sent to them)")
    p.add_argument("addresses", nargs="+", metavar="ADDRESS")
    p.add_argument("--reason", choices=reasons, default=SuppressionReason.MANUAL.value)
    p.add_argument("--detail", default=None, help="why, for the next reader")
    p = add("unsuppress", commands.unsuppress, "lift the suppression of addresses")
    p.add_argument("addresses", nargs="+", metavar="ADDRESS")
    p = sub.add_parser("suppressions", help="the suppression list", parents=[common])
    lists = p.add_subparsers(dest="action", required=True)
    p = lists.add_parser("list", help="suppressed addresses, why and since when", parents=[common])
    p.set_defaults(_run=commands.suppressions_list)
    p.add_argument("--reason", choices=reasons, default=None, help="only those of this reason")
    p = add("fate", commands.fate, "what happened to a recipient: each attempt and its reply")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("--campaign", default=None, help="only this Campaign (its pool is used)")
    p = add("unpause-ip", commands.unpause_ip, "lift the warm-up pause of an egress IP")
    p.add_argument("ip", metavar="IP")
    for name, run, help_text in (
        (
            "uninstall",
            commands.uninstall,
            "delete every Campaign, then every SendingPool, and wait",
        ),
        ("release-finalizers", commands.release_finalizers, "escape hatch: the operator is gone"),
    ):
        p = add(name, run, help_text)
        p.add_argument("-A", "--all-namespaces", action="store_true")
        if name == "uninstall":
            p.add_argument("--timeout", type=float, default=UNINSTALL_TIMEOUT_SECONDS, help="s")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    for name, default in (
        ("namespace", None),
        ("context", None),
        ("kubeconfig", None),
        ("pool", None),
        ("bootstrap", os.environ.get("MAILPIPE_KAFKA_BOOTSTRAP")),
        ("output", "table"),
    ):
        if not hasattr(args, name):
            setattr(args, name, default)
    try:
        cluster = Cluster(args.kubeconfig, args.context)
        if args.namespace is None:
            args.namespace = cluster.namespace
        run: Command = args._run
        return run(cluster, args, out or sys.stdout)
    except (UsageError, ValidationError) as exc:
        commands.warn(str(exc))
        return 2
    except ApiException as exc:
        commands.warn(f"Kubernetes API: {exc.status} {exc.reason}")
        return 1
    except KafkaError as exc:
        commands.warn(f"Kafka: {type(exc).__name__}: {str(exc)[:200]}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
