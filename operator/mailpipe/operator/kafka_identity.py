"""The operator's own Kafka identity, which every one of its Kafka clients logs in with.

The operator creates and deletes topics, produces campaign records and reads
every pool's events: with the broker's ACLs on, it is a principal of its own
(README, "Multi-tenancy and security"), distinct from each tenant's relays.
The chart mounts its credentials Secret and sets `MAILPIPE_KAFKA_*`
(`contracts.kafka_security.security_from_env`: protocol, mechanism, user name,
password *file*, CA file); the handlers keep naming clusters by their
bootstrap string, and `connection` adds this identity where clients are made
(`kafka_io`, `events_hub`), so no client of the operator can forget it.
"""

from __future__ import annotations

import functools
import os

from mailpipe.contracts.kafka_security import KafkaConnection, KafkaSecurity, security_from_env


@functools.cache
def security() -> KafkaSecurity:
    """This operator's login; its environment does not change while it runs.
    `ValueError` naming the field if the environment describes no valid one."""
    return security_from_env(os.environ)


def connection(bootstrap: str) -> KafkaConnection:
    """The cluster at `bootstrap` as this operator logs in to it."""
    return KafkaConnection(bootstrap_servers=bootstrap, security=security())
