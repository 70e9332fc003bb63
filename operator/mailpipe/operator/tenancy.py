"""Whether a SendingPool stays inside its tenant's bounds: the one check the pool reconcile calls.

A pool may only name topics in its namespace's space (`mailpipe.<namespace>.`,
`contracts.topics`) and only use what the platform's cluster policy allows
(`cluster_policy`). Kept apart from the handler so the reconcile stays a
sequence of steps: `refusal` is pure; the handler adds it to the pool's
problems (`validation.Problem`), which means Ready=False and Stalled=True with
its reason, a Warning Event, and no children, no topics.

The CRD schema refuses what it can see on its own (a `kafka.topicPrefix`
outside `mailpipe.` or inside the platform's `mailpipe._` space); it cannot
see the object's namespace, so the namespace check is the operator's (and, in
admission, the chart's ValidatingAdmissionPolicy where installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailpipe.contracts.topics import TopicOwnershipError, owned_prefix

from .cluster_policy import POLICY_MEMO_KEY, ClusterPolicy, bootstrap_violations, violations
from .models import KafkaSpec, SendingPoolSpec
from .validation import Problem

TOPIC_NOT_OWNED = "TopicNotOwned"
POLICY_VIOLATION = "PolicyViolation"


@dataclass(frozen=True)
class Refusal:
    """Why a pool is refused: a condition reason and its message."""

    reason: str
    message: str


def refusal(
    namespace: str, name: str, spec: SendingPoolSpec, policy: ClusterPolicy
) -> Refusal | None:
    """Why the pool `namespace/name` must not be reconciled, or None."""
    try:
        owned_prefix(namespace, name, spec.kafka.topic_prefix)
    except TopicOwnershipError as exc:
        return Refusal(TOPIC_NOT_OWNED, str(exc))
    refused = violations(policy, namespace, spec)
    if refused:
        return Refusal(POLICY_VIOLATION, "; ".join(refused))
    return None


def kafka_refusal(
    namespace: str, name: str, kafka: KafkaSpec, policy: ClusterPolicy
) -> Refusal | None:
    """Why the operator must not connect to the pool's Kafka at all, or None.

    Narrower than `refusal`: a pool refused for its image or hostNetwork still
    has its topics and warm-up followed, but a Kafka the policy refuses is never
    contacted (not for its topics, its events, a campaign's cancel, nor its
    deletion), and topics in another namespace's space are not this pool's to
    read or delete."""
    try:
        owned_prefix(namespace, name, kafka.topic_prefix)
    except TopicOwnershipError as exc:
        return Refusal(TOPIC_NOT_OWNED, str(exc))
    refused = bootstrap_violations(policy, kafka.bootstrap_servers)
    if refused:
        return Refusal(POLICY_VIOLATION, "; ".join(refused))
    return None


def problems(
    namespace: str, name: str, spec: SendingPoolSpec, policy: ClusterPolicy
) -> list[Problem]:
    """`refusal` as the pool reconcile's problems (nothing is applied while one stands)."""
    refused = refusal(namespace, name, spec, policy)
    return [] if refused is None else [Problem(refused.reason, refused.message)]


def policy_of(memo: Any) -> ClusterPolicy:
    """The policy `mailpipe operator` put into kopf's memo; missing means a wiring
    bug, and enforcing nothing in that case would fail open."""
    policy = memo.get(POLICY_MEMO_KEY)
    if not isinstance(policy, ClusterPolicy):
        raise RuntimeError("cluster policy missing from kopf's memo: was the operator run by main?")
    return policy
