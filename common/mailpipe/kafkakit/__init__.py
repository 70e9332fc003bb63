"""Kafka helpers shared by the operator, the relay, the tests and the benchmarks.

Written once, over kafka-python: topic administration (`ensure_topics`, and
`ensure_pool_topics` for one pool's set), reads without a consumer group
(`read_topic` and `read_records` up to the end now, `end_offsets`,
`partition_count`), and `TopicFollower`, which replays a topic and keeps
following it. Depends on no plane: the relay and the operator both import
this, never each other.
"""

from ._admin import delete_topics, ensure_pool_topics, ensure_topics, list_topics
from ._read import Record, TopicRecord, end_offsets, partition_count, read_records, read_topic
from .follower import TopicFollower

__all__ = [
    "Record",
    "TopicFollower",
    "TopicRecord",
    "delete_topics",
    "end_offsets",
    "ensure_pool_topics",
    "ensure_topics",
    "list_topics",
    "partition_count",
    "read_records",
    "read_topic",
]
