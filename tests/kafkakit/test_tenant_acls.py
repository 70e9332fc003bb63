"""The Kafka ACLs the README tells a platform team to set (issue 11, point 1),
against a real broker with SASL/PLAIN logins and KRaft's StandardAuthorizer.

One principal per namespace gets `contracts.topics.namespace_acls`: its
namespace's topics and groups (prefix ACLs) and reading the never-mail list.
With them, a tenant's relays can neither read nor write another namespace's
topics, nor join its consumer group, nor write the never-mail list, nor create
topics; the platform's principal writes the never-mail list.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    NewTopic,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from mailpipe.contracts.topics import NEVER_MAIL_TOPIC, Topics, namespace_acls, pool_group
from mailpipe.devstack import kafka, procs
from tests.conftest import wait_for

pytestmark = [pytest.mark.relay, pytest.mark.security]

ACL_BROKER_START_SECONDS = 120  # a second JVM on a loaded two-core machine
CLIENT_TIMEOUT_MS = 15_000  # a refusal comes back at once; this is for a slow machine
PASSWORDS = {kafka.SASL_ADMIN: "admin-pw", "mailpipe-a": "a-pw", "mailpipe-b": "b-pw"}
ACLS_APPLIED_SECONDS = 30
ALL_ACLS = ACLFilter(
    principal=None,
    host="*",
    operation=ACLOperation.ANY,
    permission_type=ACLPermissionType.ANY,
    resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
)
PLATFORM = "platform"
PASSWORDS[PLATFORM] = "platform-pw"


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


def _ready(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    if not procs.listening(host, int(port)):
        return False  # no client, nothing to leak
    try:
        admin = _admin(bootstrap)
    except KafkaError:
        # kafka-python leaves a half-made bootstrap's sockets open: collect
        # them here, not in whichever test runs next (as `kafka.is_ready` does)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def _acls(principal: str, namespace: str) -> list[ACL]:
    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
    return [
        ACL(
            principal=principal,
            host="*",
            operation=getattr(ACLOperation, op.upper()),
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                kinds[acl.resource],
                acl.name,
                ACLResourcePatternType.PREFIXED if acl.prefixed else ACLResourcePatternType.LITERAL,
            ),
        )
        for acl in namespace_acls(namespace)
        for op in acl.operations
    ]


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker with ACLs, the two namespaces' topics and the README's ACLs."""
    state: Path = tmp_path_factory.mktemp("acl-kafka")
    ports, command, log = kafka.prepare(state, sasl_users=PASSWORDS)
    pid = procs.spawn(command, log)
    try:
        wait_for(lambda: _ready(ports.bootstrap), ACL_BROKER_START_SECONDS, "the ACL broker")
        admin = _admin(ports.bootstrap)
        try:
            names = {NEVER_MAIL_TOPIC}
            for ns in ("a", "b"):
                t = Topics.for_pool(ns, "news", ["1m"])
                names.update([*t.all(), *t.compacted()])
            admin.create_topics([NewTopic(n, 1, 1) for n in sorted(names)])
            grants = [*_acls("User:mailpipe-a", "a"), *_acls("User:mailpipe-b", "b")]
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
            result = admin.create_acls(grants)
            assert not result["failed"], result["failed"]
            # ACLs reach the authorizer through the metadata log: wait until it has them
            wait_for(
                lambda: len(admin.describe_acls(ALL_ACLS)[0]) >= len(grants),
                ACLS_APPLIED_SECONDS,
                "the ACLs in the authorizer",
            )
        finally:
            admin.close()
        yield ports.bootstrap
    finally:
        procs.stop(pid)


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
    own = Topics.for_pool("a", "news", ["1m"])
    theirs = Topics.for_pool("b", "news", ["1m"])
    _produce(acl_broker, "mailpipe-a", own.outbound)
    _produce(acl_broker, "mailpipe-a", own.suppressions)
    assert _read(acl_broker, "mailpipe-a", own.outbound, pool_group("a", "news")) == [b"v"]
    with pytest.raises(TopicAuthorizationFailedError):
        _produce(acl_broker, "mailpipe-a", theirs.outbound)  # the hijack
    with pytest.raises(TopicAuthorizationFailedError):
        _produce(acl_broker, "mailpipe-a", theirs.suppressions)  # the poisoning
    with pytest.raises(TopicAuthorizationFailedError):
        _read(acl_broker, "mailpipe-a", theirs.outbound)
    with pytest.raises(GroupAuthorizationFailedError):
        _read(acl_broker, "mailpipe-a", own.outbound, pool_group("b", "news"))


def test_only_the_platform_writes_the_never_mail_list_and_every_tenant_reads_it(
    acl_broker: str,
) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        _produce(acl_broker, "mailpipe-a", NEVER_MAIL_TOPIC)
    _produce(acl_broker, PLATFORM, NEVER_MAIL_TOPIC)
    for tenant in ("mailpipe-a", "mailpipe-b"):
        assert _read(acl_broker, tenant, NEVER_MAIL_TOPIC) == [b"v"]


def test_a_tenant_cannot_create_topics(acl_broker: str) -> None:
    admin = _admin(acl_broker, "mailpipe-a")
    try:
        result = admin.create_topics([NewTopic("mailpipe.a.squat.outbound", 1, 1)])
    except KafkaError as exc:
        refused = str(exc)
    else:
        refused = str(result)
    finally:
        admin.close()
    assert "AUTHORIZATION" in refused.upper(), refused
