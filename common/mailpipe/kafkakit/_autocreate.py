"""Clients that never create a topic by asking for it.

A broker with `auto.create.topics.enable` (Kafka's default) creates any topic a
client asks metadata for, unless the request says not to. kafka-python 3.0
takes `allow_auto_create_topics=False` but never hands it to the cluster
metadata its requests are built from, so every client asked with creation on:
the operator's shared producer re-created a deleted pool's topics (it asks for
every topic it ever wrote to whenever it writes to a new one), seconds after
they were deleted. Topics are the operator's to create, explicitly.
"""

from __future__ import annotations

from typing import Any, TypeVar

Client = TypeVar("Client")

AUTO_CREATE_OPTION = "allow_auto_create_topics"


def without_auto_create(client: Client) -> Client:
    """`client` (a KafkaConsumer or KafkaProducer), its metadata requests made
    with topic creation off; returns it. Fails loudly if kafka-python moved
    the metadata, rather than silently creating topics again."""
    cluster: Any = getattr(client, "_cluster", None) or getattr(client, "_metadata", None)
    if cluster is None or AUTO_CREATE_OPTION not in getattr(cluster, "config", {}):
        raise RuntimeError(f"cannot turn off topic auto-creation on {type(client).__name__}")
    cluster.config[AUTO_CREATE_OPTION] = False
    return client
