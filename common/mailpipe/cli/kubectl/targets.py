"""Pure rules for what a plugin command acts on, and the one-line errors when it cannot.

The plugin's Kubernetes IO (`cluster`) reads the objects; the rules here
decide from what it read: which SendingPool a command means, where a pool
that names no Kafka gets it (the chart's `kafka.bootstrapServers`, as the
operator Deployment the chart rendered carries it), which campaign a
`--campaign` names, what an un-pause may lift and what an uninstall left
behind. Each refusal is a `UsageError` whose message is one line that says
what to do next, so a user never gets a traceback or a validation dump.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from mailpipe.contracts.topics import TopicOwnershipError, owned_prefix
from mailpipe.operator.defaults import ENV_KAFKA

from .records import UsageError

# The chart's operator Deployment (templates/deployment.yaml: mailpipe.labels + component).
OPERATOR_SELECTOR = "app.kubernetes.io/part-of=mailpipe,app.kubernetes.io/component=operator"
OPERATOR_CONTAINER = "operator"  # the container's name in that Deployment
WATCH_FLAG = "--namespace"  # `mailpipe operator --namespace=X`, repeatable; none: every namespace
OVERRIDE = "--bootstrap or MAILPIPE_KAFKA_BOOTSTRAP"  # how a user names Kafka instead


class NamespaceState(enum.Enum):
    """What the API server says about a namespace the user named."""

    EXISTS = "exists"
    MISSING = "missing"
    UNKNOWN = "unknown"  # the user may not read namespaces


def choose_pool(
    namespace: str, wanted: str | None, found: Sequence[str], ns: NamespaceState
) -> str:
    """The pool a command acts on: `wanted`, or the namespace's only one.

    `found` are the names of the namespace's SendingPools; `ns` is asked only
    when there is none, to say whether the namespace itself is the mistake."""
    if wanted is not None and wanted in found:
        return wanted
    if ns is NamespaceState.MISSING:
        raise UsageError(f"namespace {namespace} does not exist: name yours with -n")
    if wanted is not None:
        listed = f"it has {', '.join(found)}" if found else "it has none"
        raise UsageError(
            f'sendingpool "{wanted}" not found in namespace {namespace} ({listed}): '
            "name one of its pools with --pool"
        )
    if len(found) == 1:
        return found[0]
    if found:
        raise UsageError(
            f"namespace {namespace} has {len(found)} SendingPools ({', '.join(found)}): "
            "name one with --pool"
        )
    if ns is NamespaceState.UNKNOWN:
        raise UsageError(
            f"no SendingPool in namespace {namespace} (or no such namespace): "
            "name the pool's namespace with -n"
        )
    raise UsageError(f"namespace {namespace} has no SendingPool: name the pool's namespace with -n")


@dataclass(frozen=True)
class OperatorKafka:
    """What one installed operator Deployment hands pools that name no Kafka."""

    deployment: str  # namespace/name
    watches: tuple[str, ...]  # namespaces it watches; empty: every namespace
    bootstrap: str  # its MAILPIPE_KAFKA_BOOTSTRAP_SERVERS ('' when the chart value is empty)

    def watches_namespace(self, namespace: str) -> bool:
        return not self.watches or namespace in self.watches


def operator_kafka(deployment: Mapping[str, Any]) -> OperatorKafka:
    """Read the operator's Kafka default and watched namespaces from its
    Deployment (as the API serves it: camelCase keys)."""
    meta = deployment.get("metadata") or {}
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "containers"
    ) or [{}]
    container = next((c for c in containers if c.get("name") == OPERATOR_CONTAINER), containers[0])
    bootstrap = ""
    for var in container.get("env") or []:
        if var.get("name") == ENV_KAFKA:  # the last one wins, as in the pod
            bootstrap = str(var.get("value") or "").strip()
    args = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    watches = []
    for i, arg in enumerate(args):
        if arg.startswith(WATCH_FLAG + "="):
            watches.append(arg.split("=", 1)[1])
        elif arg == WATCH_FLAG and i + 1 < len(args):
            watches.append(args[i + 1])
    return OperatorKafka(f"{meta.get('namespace')}/{meta.get('name')}", tuple(watches), bootstrap)


def chart_kafka(pool: str, namespace: str, operators: Iterable[OperatorKafka]) -> str:
    """The Kafka the operator gives pool `namespace/pool`, which names none itself."""
    mine = [o for o in operators if o.watches_namespace(namespace)]
    where = f"sendingpool {pool} in namespace {namespace} names no Kafka"
    if not mine:
        raise UsageError(
            f"{where} and no mailpipe operator Deployment watches the namespace: "
            f"is the chart installed? Give Kafka with {OVERRIDE}"
        )
    values = sorted({o.bootstrap for o in mine})
    if len(values) > 1:
        which = ", ".join(f"{o.deployment} ({o.bootstrap or 'none'})" for o in mine)
        raise UsageError(
            f"{where} and the operators watching it disagree on Kafka ({which}): "
            f"name it with {OVERRIDE}"
        )
    if not values[0]:
        raise UsageError(
            f"{where} and the chart's kafka.bootstrapServers is empty "
            f"(operator {mine[0].deployment}): set one of them, or give Kafka with {OVERRIDE}"
        )
    return values[0]


def chart_kafka_forbidden(pool: str, namespace: str) -> UsageError:
    """The error when the user may not read the operator Deployment."""
    return UsageError(
        f"sendingpool {pool} in namespace {namespace} takes Kafka from the chart's "
        "kafka.bootstrapServers, which only the operator's Deployment says, and you "
        f"may not list Deployments in all namespaces: give Kafka with {OVERRIDE}"
    )


def first_problem(exc: ValidationError) -> str:
    """A validation failure as one line: the first error's place and message."""
    errors = exc.errors(include_url=False)
    if not errors:
        return str(exc).splitlines()[0]
    e = errors[0]
    where = ".".join(str(p) for p in e.get("loc", ()))
    msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {msg}{more}" if where else f"{msg}{more}"


def invalid_pool(pool: str, namespace: str, exc: ValidationError) -> UsageError:
    return UsageError(
        f"sendingpool {pool} in namespace {namespace} has an invalid spec "
        f"({first_problem(exc)}): fix its spec; "
        f"`kubectl describe sp {pool} -n {namespace}` shows why it is not Ready"
    )


def campaign_ref(namespace: str, campaign: str) -> tuple[str, str]:
    """(namespace, name) of `--campaign` NAME or NAMESPACE/NAME."""
    if "/" in campaign:
        ns, _, name = campaign.partition("/")
        if not ns or not name or "/" in name:
            raise UsageError(f"--campaign {campaign!r}: give NAME or NAMESPACE/NAME")
        return ns, name
    return namespace, campaign


def campaign_missing(namespace: str, name: str, ns: NamespaceState) -> UsageError:
    if ns is NamespaceState.MISSING:
        return UsageError(f"namespace {namespace} does not exist: name yours with -n")
    return UsageError(
        f'campaign "{name}" not found in namespace {namespace}: '
        f"`kubectl get campaigns -n {namespace}` lists them (a deleted campaign's "
        "events: leave out --campaign and name its pool with --pool)"
    )


def unpause_refusal(ip: str, pool: str, egress: Sequence[str], status_ips: Any) -> str | None:
    """Why `ip` of `pool` cannot be un-paused now (None: it is paused, lift it).

    Un-pausing starts the IP's bounce and complaint rates afresh, so an IP
    that is not paused is refused: lifting nothing would wipe its history."""
    if ip not in egress:
        raise UsageError(
            f"{ip} is not an egress IP of sendingpool {pool} ({', '.join(egress) or 'none'})"
        )
    entry = next((i for i in status_ips or [] if i.get("address") == ip), None)
    if entry is None:
        return (
            f"sendingpool {pool} reports no warm-up state for {ip} yet (is the operator "
            "running?): nothing to lift"
        )
    if entry.get("pausedReason"):
        return None
    return (
        f"{ip} is not paused (sendingpool {pool}): nothing to lift, and un-pausing "
        "would reset its bounce and complaint rates"
    )


def topics_kept_step(namespace: str, name: str, spec: Mapping[str, Any]) -> str | None:
    """The command that deletes what a pool's `TopicsKept` left (the pool's own
    topics); None when the pool owns none: its prefix names topics outside its
    namespace, which the operator never created and must not be deleted for it."""
    kafka = spec.get("kafka") or {}
    try:
        prefix = owned_prefix(namespace, name, kafka.get("topicPrefix") or None)
    except TopicOwnershipError:
        return None
    bootstrap = str(kafka.get("bootstrapServers") or "<the chart's kafka.bootstrapServers>")
    pattern = prefix.replace(".", "\\.") + "\\..*"
    return (
        f"delete its topics by hand: kafka-topics.sh --bootstrap-server {bootstrap} "
        f"--delete --topic '{pattern}'"
    )
