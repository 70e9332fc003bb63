"""Topic naming: the one place that turns a pool into its Kafka topic names.

The operator creates a pool's topics and writes their names into the relay
config; the relay, the tests and the benchmarks read and write them. All of
them build the names here, so the names (ARCHITECTURE.md, "Components") are
spelled once.

Every topic a tenant's relays touch lives in its namespace's **space**,
`mailpipe.<namespace>.`: the pool's own topics under `mailpipe.<namespace>.<pool>`,
the namespace's suppressions and campaign control beside them, and the
consumer group `mailpipe.<namespace>.<pool>.relays`. Namespaces are DNS labels
(no dot, no underscore), so one namespace's space can never contain another's,
even under Kafka's rule that `.` and `_` collide; a platform team grants each
namespace one prefix ACL (README, "Multi-tenancy and security"). The only topic
outside it a relay reads is the platform's never-mail list, which no
namespace's space can name (its second segment starts with `_`).

A pool with `routes` obtains bounces from servers it chose itself, so its hard
bounces suppress only within the pool: its suppression topic is the pool's
own, and it obeys (reads, never writes) the namespace's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .delays import DelayStep
from .errors import PermanentError

TOPIC_ROOT = "mailpipe"
# The cluster-wide never-mail list: compacted, keyed like suppressions, written
# only by the platform team (ACL); every relay obeys it. `_` keeps it out of
# every namespace's space.
NEVER_MAIL_TOPIC = f"{TOPIC_ROOT}._cluster.never-mail"
SUPPRESSIONS_SUFFIX = "suppressions"  # compacted, keyed by lower-cased address
CONTROL_SUFFIX = "campaigns"  # compacted, keyed by 'namespace/name'
# compacted, keyed by submission id: the submission endpoint's ledger of accepted
# messages (`mailpipe.inbound.submission_kafka`), only for a pool that has one
SUBMITTED_SUFFIX = "submitted"
GROUP_SUFFIX = "relays"


class TopicOwnershipError(PermanentError, ValueError):
    """A topic prefix outside the namespace's space: it would name another tenant's topics."""


def namespace_space(namespace: str) -> str:
    """The prefix every topic and group of `namespace` starts with (no trailing dot)."""
    return f"{TOPIC_ROOT}.{namespace}"


def pool_prefix(namespace: str, name: str) -> str:
    """Default topic prefix of a SendingPool: 'mailpipe.namespace.name'."""
    return f"{namespace_space(namespace)}.{name}"


def pool_group(namespace: str, name: str) -> str:
    """The consumer group of a pool's relays, inside its namespace's space.

    (The former `mailpipe-<ns>-<name>` let namespace `a-b` pool `c` and
    namespace `a` pool `b-c` share a group, i.e. read each other's mail.)"""
    return f"{pool_prefix(namespace, name)}.{GROUP_SUFFIX}"


def owned_prefix(namespace: str, name: str, prefix: str | None) -> str:
    """The pool's topic prefix: `prefix` if it stays inside the namespace's space,
    else `TopicOwnershipError` saying whose space it names."""
    if prefix is None:
        return pool_prefix(namespace, name)
    space = namespace_space(namespace) + "."
    rest = prefix.removeprefix(space)
    if rest == prefix or not rest or rest.startswith(".") or rest.endswith("."):
        raise TopicOwnershipError(
            f"kafka.topicPrefix {prefix!r} is outside this namespace's topics: "
            f"it must start with {space!r} followed by a name"
        )
    return prefix


@dataclass(frozen=True)
class Topics:
    """The topics one pool reads and writes."""

    outbound: str
    events: str
    dlq: str
    suppressions: str
    """Where this pool's hard bounces go (and what it reads back)."""
    control: str
    """The namespace's campaign control."""
    delay: dict[DelayStep, str] = field(default_factory=dict)
    obeyed: tuple[str, ...] = (NEVER_MAIL_TOPIC,)
    """Suppression topics this pool obeys but never writes."""

    @classmethod
    def for_prefix(
        cls, prefix: str, delay_steps: Iterable[str] = (), *, space: str, routed: bool = False
    ) -> Topics:
        """A pool's topics under `prefix`, in the namespace space `space`
        (`namespace_space`); each delay step is validated (`DelayStep`).
        `routed`: the pool has static routes, so its suppressions stay its own."""
        steps = [DelayStep(s) for s in delay_steps]
        shared = f"{space}.{SUPPRESSIONS_SUFFIX}"
        return cls(
            outbound=f"{prefix}.outbound",
            events=f"{prefix}.events",
            dlq=f"{prefix}.dlq",
            delay={step: f"{prefix}.delay.{step}" for step in steps},
            suppressions=f"{prefix}.{SUPPRESSIONS_SUFFIX}" if routed else shared,
            control=f"{space}.{CONTROL_SUFFIX}",
            obeyed=(shared, NEVER_MAIL_TOPIC) if routed else (NEVER_MAIL_TOPIC,),
        )

    @classmethod
    def for_pool(
        cls,
        namespace: str,
        name: str,
        delay_steps: Iterable[str] = (),
        *,
        prefix: str | None = None,
        routed: bool = False,
    ) -> Topics:
        """The topics of SendingPool `namespace/name` (`prefix` validated by `owned_prefix`)."""
        return cls.for_prefix(
            owned_prefix(namespace, name, prefix),
            delay_steps,
            space=namespace_space(namespace),
            routed=routed,
        )

    @property
    def submitted(self) -> str:
        """The submission endpoint's ledger, beside the outbound topic (created
        only for a pool with the endpoint, so not in `all` or `compacted`)."""
        return f"{self.outbound.removesuffix('.outbound')}.{SUBMITTED_SUFFIX}"

    def all(self) -> list[str]:
        """The pool's own topics, in creation order (the compacted ones are in `compacted`)."""
        return [self.outbound, self.events, self.dlq, *self.delay.values()]

    def compacted(self) -> list[str]:
        """The compacted topics the pool writes or reads: suppressions, control, obeyed."""
        return list(dict.fromkeys([self.suppressions, self.control, *self.obeyed]))


@dataclass(frozen=True)
class Acl:
    """One Kafka ACL a platform team grants (README, "Multi-tenancy and security")."""

    resource: str  # "topic", "group" or "transactional_id"
    name: str
    prefixed: bool  # a PREFIXED pattern, else LITERAL
    operations: tuple[str, ...]  # Kafka operation names: Read, Write, Describe


def namespace_acls(namespace: str) -> list[Acl]:
    """What the relays and inbound endpoints of `namespace` (their own principal)
    need, and nothing more: every topic and group of the namespace's space, the
    transactional ids there (the submission endpoint's, `<prefix>.submitted.<pod>`),
    and reading the never-mail list. Topic creation stays with the operator's
    principal; writing the never-mail list with the platform's."""
    space = namespace_space(namespace) + "."
    return [
        Acl("topic", space, True, ("Read", "Write", "Describe")),
        Acl("group", space, True, ("Read", "Describe")),
        Acl("transactional_id", space, True, ("Write", "Describe")),
        Acl("topic", NEVER_MAIL_TOPIC, False, ("Read", "Describe")),
    ]


def owned_topics(prefix: str, existing: Iterable[str]) -> list[str]:
    """The topics among `existing` that belong to the pool with `prefix`:
    outbound, events, DLQ and every delay topic, including those of delay
    steps the pool no longer lists, a routed pool's own suppressions and the
    submission endpoint's ledger. Sorted. Never the namespace's or the cluster's topics."""
    own = {f"{prefix}.outbound", f"{prefix}.events", f"{prefix}.dlq"}
    own |= {f"{prefix}.{SUPPRESSIONS_SUFFIX}", f"{prefix}.{SUBMITTED_SUFFIX}"}
    delay = f"{prefix}.delay."
    out = []
    for name in existing:
        if name in own:
            out.append(name)
        elif name.startswith(delay):
            try:
                DelayStep(name[len(delay) :])
            except ValueError:
                continue  # not a delay step: another pool's topic under a longer prefix
            out.append(name)
    return sorted(out)
