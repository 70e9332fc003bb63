"""The private parts of dependencies the relay relies on are still there.

kafka-python and aiosmtplib are each used through something they do
not document (the comment beside each use says why, and which public API would
replace it). They are pinned to the minor versions tested (pyproject.toml);
when an upgrade is tried, this file says which private attribute went away,
by name, before a rebalance or a delivery goes wrong at run time. (dkimpy's
helpers were used too, until the relay signed with its own `dkim_signing`.)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import aiosmtplib
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.cluster import ClusterMetadata
from kafka.consumer.subscription_state import SubscriptionState, TopicPartitionState
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.net.selector import NetworkSelector
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
USED_PRIVATELY = ("kafka-python", "aiosmtplib")


def _kafka_python() -> list[str]:
    """kafka-python, as `mailpipe.relay.kafka.source` uses it. Read from the
    classes and the consumer's constructor: a consumer made here would start
    connecting on a thread of its own (and leak that socket on close)."""
    init = inspect.getsource(KafkaConsumer.__init__)
    missing = []
    uses = {
        "_coordinator": (ConsumerCoordinator, "request_rejoin", "rejoin"),
        "_net": (NetworkSelector, "sleep", "waiting in the listener"),
    }
    for attribute, (cls, method, why) in uses.items():
        if not re.search(rf"self\.{attribute}\s*=", init) or not callable(
            getattr(cls, method, None)
        ):
            missing.append(f"KafkaConsumer.{attribute}.{method}() (source.py, {why})")
    if not re.search(r"self\._subscription\s*=", init) or not hasattr(
        SubscriptionState(), "assignment"
    ):
        missing.append("KafkaConsumer._subscription.assignment (source.py, diagnostics)")
    state = TopicPartitionState()
    for name in ("_position", "paused", "is_fetchable"):
        if not hasattr(state, name):
            missing.append(f"TopicPartitionState.{name} (source.py, diagnostics)")
    # kafkakit/_autocreate.py turns topic auto-creation off in the clients'
    # cluster metadata config (kafka-python 3.0 ignores the public option).
    for cls in (KafkaConsumer, KafkaProducer):
        source = inspect.getsource(cls.__init__)
        if not re.search(r"self\._(cluster|metadata)\s*=", source):
            missing.append(f"{cls.__name__}._cluster / ._metadata (kafkakit/_autocreate.py)")
    if "allow_auto_create_topics" not in ClusterMetadata.DEFAULT_CONFIG:
        missing.append(
            "ClusterMetadata.config['allow_auto_create_topics'] (kafkakit/_autocreate.py)"
        )
    return missing


def _aiosmtplib() -> list[str]:
    """aiosmtplib, as `mailpipe.relay.delivery.transport` hands its connection over."""
    smtp = aiosmtplib.SMTP()
    return [
        f"SMTP.{name} (transport.py, taking the connection over)"
        for name in ("transport", "esmtp_extensions", "supports_extension")
        if not hasattr(smtp, name)
    ]


CHECKS: dict[str, Callable[[], list[str]]] = {
    "kafka-python": _kafka_python,
    "aiosmtplib": _aiosmtplib,
}


@pytest.mark.parametrize("distribution", USED_PRIVATELY)
def test_the_private_parts_the_relay_uses_are_there(distribution: str) -> None:
    version = importlib.metadata.version(distribution)
    missing = CHECKS[distribution]()
    assert missing == [], (
        f"{distribution} {version} no longer has what mailpipe uses privately: "
        + "; ".join(missing)
        + ". See the comment at each use for the public API that would replace it."
    )


def test_a_removed_private_attribute_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from kafka.coordinator.base import BaseCoordinator

    monkeypatch.delattr(BaseCoordinator, "request_rejoin")
    assert not hasattr(ConsumerCoordinator, "request_rejoin")
    assert _kafka_python() == ["KafkaConsumer._coordinator.request_rejoin() (source.py, rejoin)"]


@pytest.mark.parametrize("distribution", USED_PRIVATELY)
def test_each_dependency_used_privately_is_pinned_to_the_minor_tested(distribution: str) -> None:
    """The range admits the installed (tested) version and no other minor."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == distribution]
    installed = Version(importlib.metadata.version(distribution))
    next_minor = Version(f"{installed.major}.{installed.minor + 1}")
    previous_minor = Version(f"{installed.major}.{max(installed.minor - 1, 0)}.999")
    assert installed in req.specifier, f"{req}: the tested {installed} is outside the pin"
    assert next_minor not in req.specifier, f"{req}: admits {next_minor}, not tested"
    if installed.minor > 0:
        assert previous_minor not in req.specifier, f"{req}: admits {previous_minor}, not tested"


def test_the_servers_certificate_chain_is_readable(tmp_path: Path) -> None:
    """The stdlib, as `mailpipe.relay.delivery.transport.peer_chain` reads the chain
    a server sent for DANE-TA: `SSLObject.get_unverified_chain` from Python 3.13,
    before it the same method of the private `_sslobj`. A real handshake in
    memory; the chain must come back leaf first, as DER."""
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from mailpipe.relay.delivery.transport import peer_chain
    from tests.relay.mx_certs import make_certs, server_context

    certs = make_certs(tmp_path, "mx.chain.test")
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="mx.chain.test")
    server = server_context(certs).wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # a TLS 1.3 handshake is two round trips
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):  # waits for the other side
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    expected = [
        c.public_bytes(serialization.Encoding.DER)
        for c in x509.load_pem_x509_certificates(certs.chain.read_bytes())
    ]
    assert peer_chain(client) == expected
