"""Kafka helpers shared by the operator, the relay, the tests and the benchmarks.

Written once, over kafka-python: the options every client is made with
(`client_options`: bootstrap servers and the SASL/TLS login of a
`KafkaConnection`), topic administration (`ensure_topics`, and
`ensure_pool_topics` for one pool's set), reads without a consumer group
(`read_topic` and `read_records` up to the end now, `end_offsets`,
`partition_count`), `TopicFollower`, which replays a topic and keeps
following it, and `probe_access`, which says in one line why an identity
cannot use its topics; `without_auto_create` makes a client that never
creates a topic by asking for it; `commit_within` bounds a transaction's
commit. Every function taking a cluster accepts a bootstrap
string (PLAINTEXT), a `KafkaConnection` or a relay's `KafkaSettings`.
Depends on no plane: the relay and the operator both import this, never
each other.
"""

from ._access import KafkaAccessDenied, KafkaLoginFailed, login_refused, probe_access
from ._admin import delete_topics, ensure_pool_topics, ensure_topics, list_topics
from ._autocreate import without_auto_create
from ._read import Record, TopicRecord, end_offsets, partition_count, read_records, read_topic
from ._security import (
    Cluster,
    KafkaAccessError,
    KafkaCredentialsError,
    client_options,
    connection_of,
    security_options,
)
from ._transactions import commit_within
from .follower import TopicFollower

__all__ = [
    "Cluster",
    "KafkaAccessDenied",
    "KafkaAccessError",
    "KafkaCredentialsError",
    "KafkaLoginFailed",
    "Record",
    "TopicFollower",
    "TopicRecord",
    "client_options",
    "commit_within",
    "connection_of",
    "delete_topics",
    "end_offsets",
    "ensure_pool_topics",
    "ensure_topics",
    "list_topics",
    "login_refused",
    "partition_count",
    "probe_access",
    "read_records",
    "read_topic",
    "security_options",
    "without_auto_create",
]
