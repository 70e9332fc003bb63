"""The Kafka ACLs the README tells a platform team to set (issue 11, point 1),
against a real broker with SASL/PLAIN logins and KRaft's StandardAuthorizer
(the session's one broker with ACLs, shared with the SCRAM login tests).

One principal per namespace gets `contracts.topics.namespace_acls`: its
namespace's topics and groups (prefix ACLs) and reading the never-mail list.
With them, a tenant's relays can neither read nor write another namespace's
topics, nor join its consumer group, nor write the never-mail list, nor create
topics; the platform's principal writes the never-mail list.
"""

from __future__ import annotations

from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    NewTopic,
    ResourcePattern,
    ResourceType,
)
from kafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from mailpipe.contracts.topics import NEVER_MAIL_TOPIC, Topics, pool_group
from mailpipe.devstack import kafka
from mailpipe.operator.fanout_lease import transactional_id
from tests.scram_broker import (
    CLIENT_TIMEOUT_MS,
    OPERATOR,
    PASSWORDS,
    Broker,
    grant,
    scram_broker,
    tenant_acls,
)

pytestmark = [pytest.mark.relay, pytest.mark.security]

__all__ = ["scram_broker"]  # the session's broker with ACLs, imported for pytest

PLATFORM = "platform"
TENANT_X, TENANT_Y = "mailpipe-x", "mailpipe-y"  # the principals of namespaces x and y


def _login(user: str) -> dict[str, Any]:
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": user,
        "sasl_plain_password": PASSWORDS[user],
    }


def _admin(bootstrap: str, user: str = kafka.SASL_ADMIN) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=CLIENT_TIMEOUT_MS, **_login(user)
    )


@pytest.fixture(scope="module")
def acl_broker(scram_broker: Broker) -> str:
    """The session's broker with ACLs (tests/scram_broker.py, a JVM started once),
    namespaces x and y's topics, the README's ACLs for them, and the platform's
    grant on the never-mail list. Namespaces of their own: the login tests use a
    and b on the same broker."""
    names: set[str] = set()
    for ns in ("x", "y"):
        t = Topics.for_pool(ns, "news", ["1m"])
        names.update([*t.all(), *t.compacted()])
    grants = [*tenant_acls(f"User:{TENANT_X}", "x"), *tenant_acls(f"User:{TENANT_Y}", "y")]
    for op in (ACLOperation.WRITE, ACLOperation.DESCRIBE):
        grants.append(
            ACL(
                f"User:{PLATFORM}",
                "*",
                op,
                ACLPermissionType.ALLOW,
                ResourcePattern(
                    ResourceType.TOPIC, NEVER_MAIL_TOPIC, ACLResourcePatternType.LITERAL
                ),
            )
        )
    grant(scram_broker.admin, names, 1, grants)
    return scram_broker.bootstrap


def _produce(bootstrap: str, user: str, topic: str) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_block_ms=CLIENT_TIMEOUT_MS, **_login(user)
    )
    try:
        producer.send(topic, key=b"k", value=b"v").get(timeout=CLIENT_TIMEOUT_MS / 1000)
    finally:
        producer.close()


def _read(bootstrap: str, user: str, topic: str, group: str | None = None) -> list[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        request_timeout_ms=CLIENT_TIMEOUT_MS + 1000,
        **_login(user),
    )
    try:
        if group is None:
            tp = TopicPartition(topic, 0)
            consumer.end_offsets([tp])  # raises the broker's refusal, where poll only logs it
            consumer.assign([tp])
        else:
            consumer.subscribe([topic])
        got: list[bytes] = []
        for _ in range(20):
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(r.value for r in records)
            if got:
                break
        if group is not None:
            consumer.commit()
        return got
    finally:
        consumer.close()


def test_a_tenant_touches_only_its_namespaces_topics(acl_broker: str) -> None:
    own = Topics.for_pool("x", "news", ["1m"])
    theirs = Topics.for_pool("y", "news", ["1m"])
    _produce(acl_broker, TENANT_X, own.outbound)
    _produce(acl_broker, TENANT_X, own.suppressions)
    assert _read(acl_broker, TENANT_X, own.outbound, pool_group("x", "news")) == [b"v"]
    with pytest.raises(TopicAuthorizationFailedError):
        _produce(acl_broker, TENANT_X, theirs.outbound)  # the hijack
    with pytest.raises(TopicAuthorizationFailedError):
        _produce(acl_broker, TENANT_X, theirs.suppressions)  # the poisoning
    with pytest.raises(TopicAuthorizationFailedError):
        _read(acl_broker, TENANT_X, theirs.outbound)
    with pytest.raises(GroupAuthorizationFailedError):
        _read(acl_broker, TENANT_X, own.outbound, pool_group("y", "news"))


def test_only_the_platform_writes_the_never_mail_list_and_every_tenant_reads_it(
    acl_broker: str,
) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        _produce(acl_broker, TENANT_X, NEVER_MAIL_TOPIC)
    _produce(acl_broker, PLATFORM, NEVER_MAIL_TOPIC)
    for tenant in (TENANT_X, TENANT_Y):
        assert _read(acl_broker, tenant, NEVER_MAIL_TOPIC) == [b"v"]


def test_a_tenant_cannot_create_topics(acl_broker: str) -> None:
    admin = _admin(acl_broker, TENANT_X)
    try:
        result = admin.create_topics([NewTopic("mailpipe.x.squat.outbound", 1, 1)])
    except KafkaError as exc:
        refused = str(exc)
    else:
        refused = str(result)
    finally:
        admin.close()
    assert "AUTHORIZATION" in refused.upper(), refused


def _transaction(bootstrap: str, user: str, transactional_id: str, topic: str) -> None:
    """Commit one record to `topic` in a transaction under `transactional_id`."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=transactional_id,
        max_block_ms=CLIENT_TIMEOUT_MS,
        **_login(user),
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, key=b"k", value=b"tx")
        producer.commit_transaction()
    finally:
        producer.close(timeout=CLIENT_TIMEOUT_MS / 1000)


def test_a_tenants_submission_endpoint_uses_transactional_ids_of_its_namespace_only(
    acl_broker: str,
) -> None:
    """The submission endpoint commits each message in a Kafka transaction under
    `<prefix>.submitted.<pod>`: the namespace's ACLs allow ids in its space, and
    no other namespace's (which would fence that one's endpoint)."""
    own = Topics.for_pool("x", "news", ["1m"])
    theirs = Topics.for_pool("y", "news", ["1m"])
    _transaction(acl_broker, TENANT_X, f"{own.submitted}.pod-0", own.outbound)
    with pytest.raises(KafkaError, match="TransactionalIdAuthorization"):
        _transaction(acl_broker, TENANT_X, f"{theirs.submitted}.pod-0", own.outbound)


def test_the_operators_fanout_transactions_are_its_own(acl_broker: str) -> None:
    """The operator commits each fan-out chunk in a transaction under the
    campaign's transactional id (`fanout_lease.transactional_id`): the README's
    operator lines allow it, and no tenant's ACLs do, so a tenant's relays cannot
    fence (stall) a fan-out of their namespace."""
    own = Topics.for_pool("x", "news", ["1m"])
    fanout = transactional_id("x", "news", "0b5e7f9c-uid")
    _transaction(acl_broker, OPERATOR, fanout, own.outbound)
    with pytest.raises(KafkaError, match="TransactionalIdAuthorization"):
        _transaction(acl_broker, TENANT_X, fanout, own.outbound)
