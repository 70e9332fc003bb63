"""A Kafka broker with SCRAM logins and the ACL authorizer, for the tests of issue 11.

One broker per test session (a JVM of its own, 10 to 20 s to start on a
loaded machine), shared by the relay's and the operator's login tests and the
ACL tests (tests/kafkakit/test_tenant_acls.py, PLAIN logins, namespaces x and
y of their own): tenants `a` and `b` with their pools' topics and the ACLs
README tells a platform team to set (`contracts.topics.namespace_acls` per
namespace principal, the operator's prefix grant with its DENY on the
never-mail list). Every client here logs in with SCRAM through
`kafkakit.client_options`, as mailpipe's own clients do.
"""

from __future__ import annotations

import gc
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest
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
from kafka.errors import KafkaError

from mailpipe.contracts.config import KafkaSecurity
from mailpipe.contracts.kafka_security import KafkaConnection
from mailpipe.contracts.topics import NEVER_MAIL_TOPIC, Topics, namespace_acls
from mailpipe.devstack import kafka, procs
from mailpipe.kafkakit import client_options
from tests.conftest import wait_for

__all__ = [
    "ACLS_APPLIED_SECONDS",
    "ALL_ACLS",
    "CLIENT_TIMEOUT_MS",
    "DELAY_STEPS",
    "MECHANISM",
    "OPERATOR",
    "PASSWORDS",
    "Broker",
    "grant",
    "login",
    "password_file",
    "scram_broker",
    "tenant_acls",
]

DELAY_STEPS = ("1m",)
ACL_BROKER_START_SECONDS = 120  # a second JVM on a loaded two-core machine
CLIENT_TIMEOUT_MS = 15_000  # a refusal comes back at once; this is for a slow machine
ACLS_APPLIED_SECONDS = 30
ALL_ACLS = ACLFilter(
    principal=None,
    host="*",
    operation=ACLOperation.ANY,
    permission_type=ACLPermissionType.ANY,
    resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
)

OPERATOR = "mailpipe-operator"
PASSWORDS = {
    kafka.SASL_ADMIN: "admin-Scram-pw-51c0",
    OPERATOR: "operator-Scram-pw-3a8f",
    "mailpipe-a": "tenant-a-Scram-pw-9e2d",
    "mailpipe-b": "tenant-b-Scram-pw-4b7a",
}
MECHANISM = "SCRAM-SHA-512"
# The PLAIN logins of tests/kafkakit/test_tenant_acls.py: tenants x and y, and the
# platform's principal (topics and ACLs of their own on the same broker).
PASSWORDS |= {"mailpipe-x": "x-pw", "mailpipe-y": "y-pw", "platform": "platform-pw"}


def login(bootstrap: str, user: str, password_file: Path) -> KafkaConnection:
    return KafkaConnection(
        bootstrap_servers=bootstrap,
        security=KafkaSecurity(
            protocol="SASL_PLAINTEXT",
            sasl_mechanism=MECHANISM,
            username=user,
            password_file=str(password_file),
        ),
    )


class Broker(NamedTuple):
    bootstrap: str
    admin: KafkaConnection  # the platform's (operator's) login: creates topics, produces


def _admin_client(admin: KafkaConnection) -> KafkaAdminClient:
    return KafkaAdminClient(**client_options(admin), request_timeout_ms=CLIENT_TIMEOUT_MS)


def _ready(admin: KafkaConnection) -> bool:
    host, _, port = admin.bootstrap_servers.rpartition(":")
    if not procs.listening(host, int(port)):
        return False
    try:
        client = _admin_client(admin)
    except KafkaError:
        with warnings.catch_warnings():  # a half-made bootstrap's sockets (kafka.is_ready)
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        return False
    try:
        client.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        client.close()


def tenant_acls(principal: str, namespace: str) -> list[ACL]:
    """README's ACLs for one namespace's principal (`contracts.topics.namespace_acls`)."""
    kinds = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "transactional_id": ResourceType.TRANSACTIONAL_ID,
    }
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


def grant(admin: KafkaConnection, topics: set[str], partitions: int, grants: list[ACL]) -> None:
    """Create those of `topics` not there yet and the ACLs `grants`; return once
    the authorizer has them."""
    client = _admin_client(admin)
    try:
        before = len(client.describe_acls(ALL_ACLS)[0])
        missing = sorted(topics - set(client.list_topics()))  # the never-mail list is shared
        client.create_topics([NewTopic(n, partitions, 1) for n in missing])
        result = client.create_acls(grants)
        assert not result["failed"], result["failed"]
        # ACLs reach the authorizer through the metadata log: wait until it has them
        wait_for(
            lambda: len(client.describe_acls(ALL_ACLS)[0]) >= before + len(grants),
            ACLS_APPLIED_SECONDS,
            "the ACLs in the authorizer",
        )
    finally:
        client.close()


def operator_acls() -> list[ACL]:
    """README's operator lines: everything under `mailpipe.`, but never writing
    the never-mail list (a DENY wins over the prefix ALLOW), and the fan-out's
    transactions."""

    def acl(op: ACLOperation, name: str, kind: ACLResourcePatternType, allow: bool) -> ACL:
        permission = ACLPermissionType.ALLOW if allow else ACLPermissionType.DENY
        return ACL(
            f"User:{OPERATOR}", "*", op, permission, ResourcePattern(ResourceType.TOPIC, name, kind)
        )

    # the fan-out's transactional ids (`fanout_lease.transactional_id`), outside
    # every namespace's space
    fanout = ResourcePattern(
        ResourceType.TRANSACTIONAL_ID,
        "mailpipe._operator.",
        ACLResourcePatternType.PREFIXED,
    )
    return [
        acl(ACLOperation.ALL, "mailpipe.", ACLResourcePatternType.PREFIXED, True),
        acl(ACLOperation.WRITE, NEVER_MAIL_TOPIC, ACLResourcePatternType.LITERAL, False),
        *(
            ACL(f"User:{OPERATOR}", "*", op, ACLPermissionType.ALLOW, fanout)
            for op in (ACLOperation.WRITE, ACLOperation.DESCRIBE)
        ),
    ]


def _grant(admin: KafkaConnection) -> None:
    """Tenants a and b's topics, and each namespace's ACLs for its principal.

    The never-mail list has one partition: the ACL tests read it back from
    partition 0."""
    client = _admin_client(admin)
    try:
        client.create_topics([NewTopic(NEVER_MAIL_TOPIC, 1, 1)])
    finally:
        client.close()
    names: set[str] = set()
    for ns in ("a", "b"):
        t = Topics.for_pool(ns, "news", list(DELAY_STEPS))
        names.update([*t.all(), *t.compacted()])
    grants = [
        *tenant_acls("User:mailpipe-a", "a"),
        *tenant_acls("User:mailpipe-b", "b"),
        *operator_acls(),
    ]
    grant(admin, names, 2, grants)


_SHARED = pytest.StashKey[Broker]()


@pytest.fixture(scope="module")
def scram_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Broker:
    """A broker with SCRAM logins and ACLs, tenants a and b's topics, and their ACLs.

    One per session, shared by every module that asks (a JVM takes 10 to 20 s to
    start on a loaded machine): the modules import this fixture, and pytest would
    otherwise make one per module. Tests share it as they share the stack's
    broker: tenant a's pool is the relay test's, the operator's pools have
    topic prefixes of their own. Stopped when the session ends."""
    config = request.config
    if _SHARED not in config.stash:
        config.stash[_SHARED] = _start(config, tmp_path_factory)
    return config.stash[_SHARED]


def _start(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Broker:
    state: Path = tmp_path_factory.mktemp("scram-kafka")
    ports, command, log = kafka.prepare(state, sasl_users=PASSWORDS)
    admin_password = state / "admin-password"
    admin_password.write_text(PASSWORDS[kafka.SASL_ADMIN])
    admin = login(ports.bootstrap, kafka.SASL_ADMIN, admin_password)
    pid = procs.spawn(command, log)
    config.add_cleanup(lambda: procs.stop(pid))
    wait_for(lambda: _ready(admin), ACL_BROKER_START_SECONDS, "the SCRAM broker")
    _grant(admin)
    return Broker(ports.bootstrap, admin)


def password_file(tmp_path: Path, name: str, value: str) -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")  # as `kubectl create secret --from-file` may leave it
    return path
