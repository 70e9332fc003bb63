"""Topic administration, written once for the operator, the relay's dev mode,
the tests and the benchmarks: create what is missing, never touch what exists;
delete only what is named (a deleted SendingPool's own topics).

Idempotent by construction: topics are listed first and each missing one is
created on its own, so a concurrent creator (two operator replicas, a relay
started with --ensure-topics next to the operator) only costs a
TopicAlreadyExistsError that is ignored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from types import MappingProxyType

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

from mailpipe.contracts.config import KafkaSettings

from ._security import Cluster, client_options

# Topic creation is a controller round trip; this is for a sick broker.
CREATE_TIMEOUT_SECONDS = 30.0
# Latest value per key wins: suppressions, campaign states.
COMPACTED = MappingProxyType({"cleanup.policy": "compact"})


def ensure_topics(
    bootstrap: Cluster,
    names: Iterable[str],
    partitions: int,
    replication: int,
    compacted: Iterable[str] = (),
    *,
    timeout_s: float = CREATE_TIMEOUT_SECONDS,
) -> list[str]:
    """Create the missing ones of `names` and `compacted` (the latter with
    log compaction); returns the names created. Existing topics are left as
    they are, whatever their partition count or config."""
    compacted = set(compacted)
    admin = KafkaAdminClient(**client_options(bootstrap), client_id="mailpipe-admin")
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        for name in [*names, *sorted(compacted)]:
            if name in existing or name in created:
                continue
            configs = dict(COMPACTED) if name in compacted else {}
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [NewTopic(name, partitions, replication, topic_configs=dict(configs))],
                    timeout_ms=int(timeout_s * 1000),
                )
                created.append(name)
    finally:
        admin.close()
    return created


def ensure_pool_topics(
    settings: KafkaSettings,
    partitions: int = 4,
    replication: int = 1,
    timeout_s: float = CREATE_TIMEOUT_SECONDS,
) -> list[str]:
    """Create a pool's missing topics: outbound, delay, events and DLQ, plus the
    compacted suppression, campaign-control and obeyed (never-mail) topics. For dev and tests; in a
    cluster the operator creates them from the SendingPool."""
    return ensure_topics(
        settings.connection,
        [
            settings.outbound_topic,
            settings.events_topic,
            settings.dlq_topic,
            *settings.delay_topics.values(),
        ],
        partitions,
        replication,
        compacted=settings.topics.compacted(),
        timeout_s=timeout_s,
    )


def list_topics(bootstrap: Cluster) -> set[str]:
    """The names of every topic on the cluster."""
    admin = KafkaAdminClient(**client_options(bootstrap), client_id="mailpipe-admin")
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def delete_topics(
    bootstrap: Cluster, names: Iterable[str], *, timeout_s: float = CREATE_TIMEOUT_SECONDS
) -> list[str]:
    """Delete those of `names` that exist; returns the names deleted. A topic
    already gone (another deleter, an earlier attempt) is not an error, so a
    retried pool deletion converges."""
    admin = KafkaAdminClient(**client_options(bootstrap), client_id="mailpipe-admin")
    deleted: list[str] = []
    try:
        existing = set(admin.list_topics())
        for name in names:
            if name not in existing or name in deleted:
                continue
            with contextlib.suppress(UnknownTopicOrPartitionError):
                admin.delete_topics([name], timeout_ms=int(timeout_s * 1000))
                deleted.append(name)
    finally:
        admin.close()
    return deleted
