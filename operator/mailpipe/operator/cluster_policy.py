"""The platform team's policy over the SendingPool fields a tenant controls.

mailpipe runs once per cluster and any namespace editor may write a
SendingPool; the operator then creates pods in that namespace on the pool's
word. Without a policy that makes the operator a confused deputy: any image,
hostNetwork, any Kafka cluster or DNS resolver, any SMTP port and any static
route (issue 11, "anything goes in a pool"). The platform team writes this
policy in the chart's values (`policy:`); the chart mounts it as a ConfigMap
volume and the operator reads it at start (`--policy`, or `MAILPIPE_POLICY`),
refusing to start on an invalid one. It then re-reads the file
(`PolicyFile.reread`, every `handlers.policy.POLICY_RECHECK_SECONDS`): the
kubelet swaps a ConfigMap volume's content atomically (a `..data` symlink), so
a read sees the old policy or the new one whole. A new valid policy is put in
force and every pool whose verdict it changes (`policy_changes`) is reconciled
again: a refused pool's relays are scaled to 0 (`handlers.pool`). A new
invalid one is logged as an error and the policy in force stays.

Decisions are pure (`violations`): a spec and its namespace in, a sentence per
refused field out, each naming the value and what is allowed, so the pool's
Ready=False condition (reason `PolicyViolation`) tells the tenant what to fix.
Patterns are shell patterns (`fnmatch`, case-sensitive; `*` also matches `/`).

An operator started without a policy file enforces none (`unrestricted`, logged
as a warning): that is the dev stack's mode; the chart always passes one.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from mailpipe.contracts.errors import PermanentError

from .models import SendingPoolSpec

log = logging.getLogger("mailpipe.operator")

POLICY_ENV = "MAILPIPE_POLICY"
POLICY_MEMO_KEY = "mailpipe-cluster-policy"  # kopf memo key (see handlers.context)
POLICY_FILE_MEMO_KEY = "mailpipe-cluster-policy-file"  # its PolicyFile, re-read (handlers.policy)
ANY = "*"
SMTP_PORT = 25  # MX hosts listen on 25 (RFC 5321); anything else is a route or a probe

Port = Annotated[int, Field(ge=1, le=65535)]


class PolicyError(PermanentError, ValueError):
    """A policy file that cannot be used; the operator does not start."""


class ClusterPolicy(BaseModel):
    """What tenants' SendingPools may use. A key left out is the restrictive default."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    allowed_images: list[str] = Field(
        default_factory=lambda: ["mailpipe.local/mailpipe:*"],
        description="Relay images (patterns).",
    )
    allowed_bootstrap_servers: list[str] = Field(
        default_factory=list,
        description="Kafka host:port a pool may name (patterns); each of its servers must match.",
    )
    allowed_dns_nameservers: list[str] = Field(
        default_factory=list,
        description="Resolvers (host:port patterns) a pool may set as dnsNameserver.",
    )
    allowed_smtp_ports: list[Port] | None = Field(
        default_factory=lambda: [SMTP_PORT],
        description="Ports of MX hosts a pool may use; null: any.",
    )
    allowed_routes: list[str] = Field(
        default_factory=list,
        description="Static next hops (host:port patterns) a pool's routes may name.",
    )
    host_network_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces (patterns) whose pools may run relays with hostNetwork.",
    )
    private_destination_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces (patterns) whose pools may deliver to private, loopback or"
        " link-local addresses (delivery.allowPrivateDestinations / allowedNetworks): a relay"
        " that may connect inward can probe the cluster's own network.",
    )
    kafka_credentials_required: bool = Field(
        default=False,
        description="Every pool must set kafka.credentialsSecretRef: with the broker's ACLs,"
        " a pool without a login would reach Kafka as an anonymous (or the listener's)"
        " principal instead of its namespace's.",
    )

    @classmethod
    def unrestricted(cls) -> ClusterPolicy:
        """Everything allowed: the operator's mode without a policy file (dev stack)."""
        return cls(
            allowed_images=[ANY],
            allowed_bootstrap_servers=[ANY],
            allowed_dns_nameservers=[ANY],
            allowed_smtp_ports=None,
            allowed_routes=[ANY],
            host_network_namespaces=[ANY],
            private_destination_namespaces=[ANY],
        )


def _allowed(value: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _shown(patterns: Sequence[object] | None) -> str:
    if patterns is None:
        return "any"
    return ", ".join(map(str, patterns)) or "none"


def bootstrap_violations(policy: ClusterPolicy, bootstrap_servers: str) -> list[str]:
    """Each of `bootstrap_servers` the policy refuses, as a sentence: the operator
    never connects to one (README: the operator connects where a pool names)."""
    return [
        f"kafka.bootstrapServers {server} not in allowed bootstrap servers "
        f"({_shown(policy.allowed_bootstrap_servers)})"
        for server in (s.strip() for s in bootstrap_servers.split(","))
        if not _allowed(server, policy.allowed_bootstrap_servers)
    ]


def violations(policy: ClusterPolicy, namespace: str, spec: SendingPoolSpec) -> list[str]:
    """Each field of `spec` the policy refuses in `namespace`, as a sentence; [] if none."""
    out: list[str] = []
    if not _allowed(spec.image, policy.allowed_images):
        out.append(f"image {spec.image} not in allowed images ({_shown(policy.allowed_images)})")
    out += bootstrap_violations(policy, spec.kafka.bootstrap_servers)
    if spec.dns_nameserver is not None and not _allowed(
        spec.dns_nameserver, policy.allowed_dns_nameservers
    ):
        out.append(
            f"dnsNameserver {spec.dns_nameserver} not in allowed DNS resolvers "
            f"({_shown(policy.allowed_dns_nameservers)})"
        )
    ports = policy.allowed_smtp_ports
    if ports is not None and spec.smtp_port not in ports:
        out.append(f"smtpPort {spec.smtp_port} not in allowed SMTP ports ({_shown(ports)})")
    for domain, hops in sorted(spec.routes.items()):
        for hop in hops:
            target = f"{hop.host}:{hop.port}"
            if not _allowed(target, policy.allowed_routes):
                out.append(
                    f"route {domain} -> {target} not in allowed routes "
                    f"({_shown(policy.allowed_routes)})"
                )
    if spec.host_network and not _allowed(namespace, policy.host_network_namespaces):
        out.append(f"hostNetwork not allowed in namespace {namespace}")
    inward = spec.delivery.allow_private_destinations or spec.delivery.allowed_networks
    if inward and not _allowed(namespace, policy.private_destination_namespaces):
        out.append(
            "delivery to private addresses (allowPrivateDestinations/allowedNetworks)"
            f" not allowed in namespace {namespace}"
        )
    if policy.kafka_credentials_required and spec.kafka.credentials_secret_ref is None:
        out.append("kafka.credentialsSecretRef is required (the relays must log in to Kafka)")
    return out


def policy_path(path: str | None) -> str | None:
    """The policy file to read: `path`, else $MAILPIPE_POLICY; None for no policy."""
    return path or os.environ.get(POLICY_ENV) or None


def parse_policy(text: str, path: str) -> ClusterPolicy:
    """The policy in YAML `text` (read from `path`); PolicyError names the bad key."""
    try:
        data = yaml.safe_load(text) or {}
        return ClusterPolicy.model_validate(data)
    except yaml.YAMLError as exc:
        raise PolicyError(f"cannot read cluster policy {path}: {exc}") from exc
    except ValidationError as exc:
        msgs = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise PolicyError(f"invalid cluster policy {path}: " + "; ".join(msgs)) from exc


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise PolicyError(f"cannot read cluster policy {path}: {exc}") from exc


class PolicyFile:
    """The mounted policy file and the policy last read from it whole.

    `reread` compares the file's text with the last text seen, so an unchanged
    file costs one small read; a changed one is parsed, and only a valid one
    replaces `policy`. A bad text is reported once (PolicyError), not at every
    re-read, and the policy in force stays until the file changes again.
    """

    def __init__(self, path: str, text: str, policy: ClusterPolicy) -> None:
        self.path = path
        self.policy = policy
        self._seen = text

    @classmethod
    def open(cls, path: str) -> PolicyFile:
        text = _read(path)
        return cls(path, text, parse_policy(text, path))

    def reread(self) -> ClusterPolicy | None:
        """The new policy if the file changed to a valid one; None if unchanged.

        Raises PolicyError when the file changed to something unusable (once
        per change; a file that cannot be read is reported at each attempt)."""
        text = _read(self.path)
        if text == self._seen:
            return None
        self._seen = text
        policy = parse_policy(text, self.path)
        if policy == self.policy:
            return None  # reformatted, same rules
        self.policy = policy
        return policy


def load_policy(path: str | None) -> ClusterPolicy:
    """The policy in the YAML file `path` (default: $MAILPIPE_POLICY); unrestricted
    with a warning when neither is set. PolicyError names the bad key."""
    path = policy_path(path)
    if path is None:
        log.warning(
            "no cluster policy (--policy): every image, port, route and hostNetwork allowed"
        )
        return ClusterPolicy.unrestricted()
    return PolicyFile.open(path).policy


# --- a policy change over the pools already admitted -------------------------------------


@dataclass(frozen=True)
class PolicyChange:
    """A pool whose verdict a policy change changed: what was refused before and now."""

    pool: str  # namespace/name
    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def refused(self) -> bool:
        """Refused by the new policy: its relays stop (scaled to 0)."""
        return bool(self.after)

    def describe(self) -> str:
        if not self.after:
            return f"{self.pool}: allowed again, relays back to spec.replicas"
        verb = "still refused" if self.before else "now refused, relays scaled to 0"
        return f"{self.pool}: {verb}: " + "; ".join(self.after)


def policy_changes(
    old: ClusterPolicy,
    new: ClusterPolicy,
    pools: Iterable[tuple[str, str, SendingPoolSpec]],
) -> list[PolicyChange]:
    """The pools (namespace, name, spec) whose refusal `new` changes, in the order given.

    A pool is judged whole: any field the policy refuses refuses the pool (one
    route of two allowed is still a refused pool), so its relays either run
    with everything the policy allows or do not run.
    """
    out = []
    for namespace, name, spec in pools:
        before = tuple(violations(old, namespace, spec))
        after = tuple(violations(new, namespace, spec))
        if before != after:
            out.append(PolicyChange(f"{namespace}/{name}", before, after))
    return out
