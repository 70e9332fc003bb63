"""Fixtures over the real local stack (one per test session) and per-test isolation.

The stack starts lazily, the first time a test asks for it, and stops at the
end of the session. A component that fails to start fails the test with its
log tail; nothing here ever skips. Processes, waits, kubectl and helm go
through the one harness, `mailpipe.devstack.harness`.
"""

from __future__ import annotations

import os
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.resolver
import pytest
from kubernetes import client, config

from mailpipe.contracts.topics import pool_prefix
from mailpipe.devstack import harness
from mailpipe.devstack.dns import Zone
from mailpipe.devstack.procs import free_port
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.devstack.stack import Stack, StackState

DNS_LIFETIME_SECONDS = 2.0  # dnsmasq on loopback answers at once; a lost query fails fast


def wait_for(
    condition: Callable[[], bool],
    timeout_seconds: float,
    what: str,
    child: harness.Child | None = None,
) -> None:
    """`harness.wait_for` as a test failure: an AssertionError that carries the
    log tail of `child` when it died or the wait timed out."""
    try:
        harness.wait_for(condition, timeout_seconds, what, watch=[child] if child else [])
    except harness.HarnessError as exc:
        raise AssertionError(str(exc)) from None


@pytest.fixture(scope="session")
def devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("devstack"))
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def stack_state(devstack: Stack) -> StackState:
    state = devstack.state
    assert state is not None
    return state


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_state: StackState) -> str:
    return stack_state.kafka_bootstrap


@pytest.fixture(scope="session")
def kubeconfig(stack_state: StackState) -> str:
    return stack_state.kubeconfig


@pytest.fixture(scope="session")
def kube_api(kubeconfig: str) -> client.ApiClient:
    return config.new_client_from_config(config_file=kubeconfig)


@pytest.fixture
def unique() -> str:
    """A short random suffix for names that must not collide between tests."""
    return uuid.uuid4().hex[:8]


def namespace_name(unique: str) -> str:
    """The test's namespace (`namespace`), named before it exists."""
    return f"test-{unique}"


@pytest.fixture
def topic_prefix(unique: str) -> str:
    """The default topic prefix of pool "news" in the test's namespace, as the
    operator derives it (topics live in their namespace's space, issue 11)."""
    return pool_prefix(namespace_name(unique), "news")


@pytest.fixture
def namespace(kube_api: client.ApiClient, unique: str) -> Iterator[str]:
    name = namespace_name(unique)
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        # No controller-manager: the namespace stays Terminating, which is harmless.
        core.delete_namespace(name)


DNSSetter = Callable[[list[Zone]], dns.resolver.Resolver]


@pytest.fixture
def dns_zones(devstack: Stack) -> Iterator[DNSSetter]:
    """Replace the stack's DNS records; returns a resolver pointed at dnsmasq."""

    def set_zones(zones: list[Zone]) -> dns.resolver.Resolver:
        devstack.set_dns(zones)
        state = devstack.state
        assert state is not None
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = state.dns_port
        resolver.lifetime = DNS_LIFETIME_SECONDS
        return resolver

    yield set_zones
    devstack.set_dns([])


@pytest.fixture
def smtp_receiver() -> Iterator[Callable[..., SMTPReceiver]]:
    """Factory of recording receivers (offering STARTTLS with `tls`); each one is
    stopped after the test."""
    started: list[SMTPReceiver] = []

    def make(host: str, port: int = 0, tls: ssl.SSLContext | None = None) -> SMTPReceiver:
        rx = SMTPReceiver(host, port or free_port(host), tls_context=tls).start()
        started.append(rx)
        return rx

    yield make
    for rx in started:
        rx.stop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cli_env(stack_state: StackState) -> dict[str, str]:
    """Environment for subprocesses (kubectl, helm, mailpipe) aimed at the stack."""
    return {**os.environ, **stack_state.env()}
