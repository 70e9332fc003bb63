"""Fixtures over the real local stack (one per test session) and per-test isolation.

The stack starts lazily, the first time a test asks for it, and stops at the
end of the session. A component that fails to start fails the test with its
log tail; nothing here ever skips. Processes, waits, kubectl and helm go
through the one harness, `mailpipe.devstack.harness`.
"""

from __future__ import annotations

import os
import signal
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.resolver
import pytest
from kubernetes import client, config

from mailpipe.contracts.topics import pool_prefix
from mailpipe.devstack import harness, procs
from mailpipe.devstack.dns import Zone
from mailpipe.devstack.procs import free_port
from mailpipe.devstack.shared import shared_stack
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.devstack.stack import Stack, StackState

# What a user or a supervisor sends to stop a run: `timeout` and CI runners send
# SIGTERM, a closed terminal SIGHUP, Ctrl-C SIGINT.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_STOPPED_BY = pytest.StashKey[list[int]]()

DNS_LIFETIME_SECONDS = 2.0  # dnsmasq on loopback answers at once; a lost query fails fast
STALL_WAIT_LIMIT_SECONDS = 3600.0  # wait_progressing: the test's own timeout comes first


# Fixtures that change what the whole stack serves: `dns_zones` replaces every
# DNS record, `broken_stack` stops components. A test using one is `exclusive`.
EXCLUSIVE_FIXTURES = frozenset({"dns_zones", "broken_stack"})


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `exclusive` every test that changes the shared stack for everyone
    (see EXCLUSIVE_FIXTURES), so a new test using one of those fixtures goes
    to the serial phase of scripts/run-tests.sh without anyone remembering to."""
    for item in items:
        if EXCLUSIVE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.exclusive)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """An `exclusive` test among parallel workers would break their stack (or
    they its records): refuse it there with the way to run it."""
    if xdist_worker(item.config) and item.get_closest_marker("exclusive"):
        pytest.fail(
            "an exclusive test changes the shared stack: run it without -n "
            "(scripts/run-tests.sh runs it in its serial phase)",
            pytrace=False,
        )


def pytest_configure(config: pytest.Config) -> None:
    """A run stopped by a signal stops everything it started.

    The stack's components, relays and operators run in sessions of their own
    (so stopping one signals exactly what it started): a signal to pytest
    reaches none of them. Before this, SIGTERM (what `timeout` sends) ended
    pytest at once, no fixture finalizer ran, and Kafka, etcd, the apiserver,
    dnsmasq and the operator stayed up. Now the first SIGTERM, SIGHUP or SIGINT
    interrupts the run as Ctrl-C does: pytest tears every fixture down. Later
    signals are ignored, so a supervisor repeating its SIGTERM cannot cut that
    clean-up short; `pytest_unconfigure` stops whatever is still running, and
    a run killed outright (SIGKILL) takes its children with it
    (`procs.die_with_this_process`)."""
    procs.die_with_this_process()
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread (pytest run in-process)
    stopped_by: list[int] = []
    config.stash[_STOPPED_BY] = stopped_by

    def on_signal(signum: int, _: object) -> None:
        name = signal.Signals(signum).name
        if stopped_by:
            print(f"\n{name}: already stopping, finishing the clean-up", file=sys.stderr)
            return
        stopped_by.append(signum)
        raise KeyboardInterrupt(f"{name}: stopping the run, tearing its fixtures down")

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """After the fixtures' teardown (pytest's own hook): a run stopped by a
    signal exits with 128 + the signal, as the shell reports it."""
    stopped_by = session.config.stash.get(_STOPPED_BY, [])
    if stopped_by:
        session.exitstatus = 128 + stopped_by[0]


def pytest_unconfigure(config: pytest.Config) -> None:
    """A stopped run's last sweep: any child still running (a teardown the
    signal cut short, a process started but not yet handed to a fixture) is
    stopped by process group."""
    if not config.stash.get(_STOPPED_BY, []):
        return
    left = procs.started()
    for pid in left:
        procs.signal_group(pid, signal.SIGTERM)
    for pid in left:
        procs.stop(pid, signalled=True)


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


def wait_progressing(
    condition: Callable[[], bool],
    progress: Callable[[], int],
    stall_seconds: float,
    what: str,
    child: harness.Child | None = None,
) -> None:
    """Wait until `condition` holds for as long as `progress()` keeps moving.

    On a busy machine a fixed timeout for "everything delivered" is a guess at
    the machine's speed; this fails only when nothing moved for
    `stall_seconds` (a stall, with `child`'s log tail), and pytest-timeout
    bounds the whole test."""
    last = progress()
    moved_at = time.monotonic()

    def check() -> bool:
        nonlocal last, moved_at
        if condition():
            return True
        now = progress()
        if now != last:
            last, moved_at = now, time.monotonic()
        elif time.monotonic() - moved_at > stall_seconds:
            tail = f"\n{child.describe()}: {child.log_section()}" if child else ""
            raise AssertionError(f"no progress for {stall_seconds:.0f}s ({now}): {what}{tail}")
        return False

    wait_for(check, STALL_WAIT_LIMIT_SECONDS, what, child)


SHARED_STACK_DIR = "devstack-shared"  # in the run's base directory (pytest-xdist)


def xdist_worker(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist worker (`config.workerinput` is
    xdist's own mark; the PYTEST_XDIST_WORKER variable would also be inherited
    by a pytest a test starts as a child)."""
    return hasattr(config, "workerinput")


@pytest.fixture(scope="session")
def devstack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The session's stack. Under pytest-xdist the workers share one
    (`mailpipe.devstack.shared`), kept in the run's base directory, which every
    worker's own temporary directory sits in."""
    if xdist_worker(request.config):
        run_dir = tmp_path_factory.getbasetemp().parent
        with shared_stack(run_dir / SHARED_STACK_DIR) as shared:
            yield shared
        return
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
