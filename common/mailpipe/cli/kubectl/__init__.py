"""`kubectl mailpipe`: day-2 actions on a mailpipe installation, as a kubectl plugin.

Installed as the `kubectl-mailpipe` executable (pyproject entry point), which
kubectl finds on PATH (`kubectl mailpipe ...`), as cert-manager's `cmctl` or
CloudNativePG's `kubectl cnpg`. The user names a namespace and a pool; the
plugin reads the pool's Kafka and topics from the SendingPool itself:

    kubectl mailpipe suppress a@example.com --pool news -n mail
    kubectl mailpipe unsuppress a@example.com --pool news -n mail
    kubectl mailpipe suppressions list --pool news -n mail --reason complaint --source feedback
    kubectl mailpipe fate a@example.com --campaign spring -n mail
    kubectl mailpipe fate a@example.com -n mail       # every pool and campaign of the namespace
    kubectl mailpipe unpause-ip 203.0.113.7 --pool news -n mail
    kubectl mailpipe uninstall --all-namespaces       # the chart's pre-delete hook runs this
    kubectl mailpipe release-finalizers -n mail       # the escape hatch: the operator is gone

`--pool` may be left out when the namespace has one pool. A pool that names
no Kafka uses the chart's `kafka.bootstrapServers`, read from the operator
Deployment the chart installed (listing Deployments in all namespaces).
`--bootstrap` (or MAILPIPE_KAFKA_BOOTSTRAP) replaces the pool's Kafka address
when the plugin runs where that address does not resolve (outside the
cluster) or may not read the operator's Deployment. Every error is one line
that says what to do next.
`--kafka-security-protocol`, `--kafka-sasl-mechanism`, `--kafka-username`,
`--kafka-password-file` and `--kafka-ca-file` (or the operator's variables
MAILPIPE_KAFKA_SECURITY_PROTOCOL, ..._SASL_MECHANISM, ..._USERNAME,
..._PASSWORD_FILE, ..._CA_FILE) are the plugin's Kafka login, for a broker
with ACLs; the password is only ever read from a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TextIO

from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from mailpipe.contracts.kafka_security import (
    ENV_CA_FILE,
    ENV_PASSWORD_FILE,
    ENV_SASL_MECHANISM,
    ENV_SECURITY_PROTOCOL,
    ENV_USERNAME,
    KafkaSecurity,
    security_from_env,
)
from mailpipe.contracts.wire import SuppressionReason
from mailpipe.kafkakit import KafkaAccessError

from . import commands
from .cluster import ApiException, Cluster, ConfigException
from .kafka_io import KafkaError, KafkaFailure
from .records import REASONS, SOURCE_KINDS, UsageError
from .targets import first_problem

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
    for flag, (_, what) in KAFKA_LOGIN_FLAGS.items():
        p.add_argument(f"--{flag}", dest=flag.replace("-", "_"), default=s, help=what)
    return p


# flag -> (environment variable, help): the plugin's Kafka login, as the operator's
KAFKA_LOGIN_FLAGS = MappingProxyType(
    {
        "kafka-security-protocol": (
            ENV_SECURITY_PROTOCOL,
            "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        ),
        "kafka-sasl-mechanism": (ENV_SASL_MECHANISM, "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
        "kafka-username": (ENV_USERNAME, "SASL user name"),
        "kafka-password-file": (ENV_PASSWORD_FILE, "file holding the SASL password"),
        "kafka-ca-file": (ENV_CA_FILE, "PEM CA bundle of the broker's certificate"),
    }
)


def kafka_login(args: argparse.Namespace, env: Mapping[str, str]) -> KafkaSecurity:
    """The login the flags give, each flag overriding its environment variable."""
    merged = dict(env)
    for flag, (var, _) in KAFKA_LOGIN_FLAGS.items():
        value = getattr(args, flag.replace("-", "_"), None)
        if value is not None:
            merged[var] = value
    return security_from_env(merged)


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
    # Checked by the command (records.checked_reason), not by choices: an unknown
    # reason gets one line that lists the valid ones, not argparse's usage dump.
    p.add_argument("--reason", default=None, help=f"only this reason: {', '.join(REASONS)}")
    p.add_argument(
        "--source",
        default=None,
        help=f"only from this source: {', '.join(SOURCE_KINDS)}, or any part of its text",
    )
    p = add(
        "fate",
        commands.fate,
        "what happened to a recipient: each attempt and its reply, what came back,"
        " the suppressions that hold",
    )
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
        args.kafka_login = kafka_login(args, os.environ)
        cluster = Cluster(args.kubeconfig, args.context)
        if args.namespace is None:
            args.namespace = cluster.namespace
        run: Command = args._run
        return run(cluster, args, out or sys.stdout)
    except UsageError as exc:
        commands.warn(str(exc))
        return 2
    except ValidationError as exc:
        commands.warn(first_problem(exc))
        return 2
    except ApiException as exc:
        commands.warn(api_error(exc))
        return 1
    except HTTPError as exc:  # no answer from the API server at all
        pool = getattr(exc, "pool", None)
        where = f" at {pool.host}:{pool.port}" if pool is not None else ""
        commands.warn(
            f"cannot reach the Kubernetes API{where} ({type(exc).__name__}): "
            "check KUBECONFIG, --kubeconfig or --context"
        )
        return 1
    except ConfigException as exc:
        commands.warn(
            f"no usable kubeconfig ({' '.join(str(exc).split())[:200]}): "
            "set KUBECONFIG or pass --kubeconfig"
        )
        return 1
    except KafkaFailure as exc:
        commands.warn(str(exc))
        return 1
    except KafkaError as exc:  # raised outside kafka_io's mapping (none known)
        commands.warn(f"Kafka: {type(exc).__name__}: {str(exc)[:200]}")
        return 1
    except KafkaAccessError as exc:  # a credential file missing or empty, named
        commands.warn(f"Kafka: {exc}: check the --kafka-* options or MAILPIPE_KAFKA_* variables")
        return 1


def api_error(exc: ApiException) -> str:
    """An API server refusal as one line: status, its own message, and what to do."""
    try:
        said = str(json.loads(exc.body or "{}").get("message") or "")
    except (ValueError, AttributeError):
        said = ""
    said = " ".join(said.split())[:300]
    head = f"Kubernetes API: {exc.status} {exc.reason}" + (f": {said}" if said else "")
    if exc.status in (401, 403):
        return f"{head}: ask for the rights, or use a kubeconfig/--context that has them"
    return f"{head}: check the names given, or retry"


if __name__ == "__main__":
    sys.exit(main())
