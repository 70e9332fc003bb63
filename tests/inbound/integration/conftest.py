"""Inbound endpoints as child processes on a test pool's topics: the feedback
receiver (`mailpipe feedback`) and the submission endpoint (`mailpipe
submission serve`, with a test CA and smtplib clients that trust it)."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailpipe.devstack.harness import Child, Children
from mailpipe.devstack.procs import free_port, listening
from mailpipe.inbound.submission_policy import hash_password
from tests.conftest import wait_for
from tests.relay.integration.conftest import Pool, pool_factory, relays, routed_pool
from tests.relay.mx_certs import make_certs

__all__ = [
    "Endpoint",
    "feedback_servers",
    "pool_factory",
    "relays",
    "routed_pool",
    "submission",
]

HOST = "localhost"  # the certificate's name; the listeners are on 127.0.0.1
LISTEN = "127.0.0.1"
PASSWORD = "app-Submission-pw-7c1e"
USERS = {
    "app": {"sender_domains": ["shop.example"], "messages_per_minute": 1000},
    "slow": {"sender_domains": ["shop.example"], "messages_per_minute": 2},
}
MAX_MESSAGE_BYTES = 64 * 1024
START_SECONDS = 120  # Kafka transactions initialised and three topics read, on a loaded machine
CLIENT_TIMEOUT_SECONDS = 60  # one SMTP command; DATA waits up to the Kafka deadline


@dataclass
class Endpoint:
    child: Child
    starttls_port: int
    implicit_port: int
    ca: Path
    config: dict[str, Any]

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def plain(self) -> smtplib.SMTP:
        """Connected and greeted (EHLO), no TLS yet."""
        client = smtplib.SMTP(HOST, self.starttls_port, timeout=CLIENT_TIMEOUT_SECONDS)
        client.ehlo("client.test")
        return client

    def tls(self) -> smtplib.SMTP:
        """After STARTTLS, not logged in."""
        client = self.plain()
        client.starttls(context=self.context())
        client.ehlo("client.test")
        return client

    def login(self, user: str = "app", password: str = PASSWORD) -> smtplib.SMTP:
        client = self.tls()
        client.login(user, password)
        return client


def message(
    sender: str = "news@shop.example",
    to: str = "u@d.test",
    subject: str = "hello",
    message_id: str = "<m1@shop.example>",
    body: str = "hi there",
) -> str:
    return (
        f"From: Shop <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\n\r\n{body}\r\n"
    )


@pytest.fixture
def submission(tmp_path: Path) -> Iterator[Callable[..., Endpoint]]:
    """Starts `mailpipe submission serve` on a pool's topics; stopped after the test."""
    certs = make_certs(tmp_path, HOST, ca_name="submission-test-ca")
    users = tmp_path / "users.yaml"
    users.write_text(
        yaml.safe_dump(
            {
                name: {**spec, "password_hash": hash_password(PASSWORD)}
                for name, spec in USERS.items()
            }
        )
    )
    with Children(tmp_path) as children:

        def start(pool: Pool, name: str = "submission", **overrides: Any) -> Endpoint:
            ports = free_port(LISTEN), free_port(LISTEN)
            config: dict[str, Any] = {
                "pool": pool.config.pool,
                "kafka": pool.config.kafka.model_dump(mode="json"),
                "transactional_id": f"{pool.prefix}-{name}",
                "hostname": HOST,
                "starttls": {"address": LISTEN, "port": ports[0]},
                "implicit_tls": {"address": LISTEN, "port": ports[1]},
                "tls_cert_file": str(certs.chain),
                "tls_key_file": str(certs.key),
                "users_file": str(users),
                "max_message_bytes": MAX_MESSAGE_BYTES,
                "kafka_deadline_seconds": 5,
                "metrics_port": 0,
                **overrides,
            }
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            child = children.mailpipe(
                name, ["submission", "serve", "--config", str(path), "--ensure-topics"]
            )
            wait_for(
                lambda: listening(LISTEN, ports[0]) and listening(LISTEN, ports[1]),
                START_SECONDS,
                "the submission endpoint listening",
                child,
            )
            return Endpoint(child, ports[0], ports[1], certs.ca, config)

        yield start


@pytest.fixture
def feedback_servers(tmp_path: Path) -> Iterator[Callable[[Pool], Child]]:
    """Starts `mailpipe feedback --config <pool config>` children; stopped after the test."""
    (tmp_path / "feedback").mkdir(exist_ok=True)
    with Children(tmp_path / "feedback") as children:

        def start(pool: Pool) -> Child:
            return children.mailpipe(
                "feedback", ["feedback", "--config", str(pool.path), "--receiver-id", "fb-test"]
            )

        yield start
