"""Fault-suite fixtures: the relay and operator harnesses, plus components that fail.

The fault tests break the session's shared stack (the Kafka broker, the
apiserver, dnsmasq) on purpose; `broken_stack` brings every component back
after the test whatever happened, so the tests after it see a whole stack.
The relay and operator fixtures are the integration suites' own, imported
here rather than copied.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailpipe.devstack.procs import free_port
from mailpipe.devstack.stack import Stack
from tests.faults.receivers import Faults, FaultyReceiver
from tests.faults.tally import Tally, decode_events, tally
from tests.operator.integration.conftest import crds, env_for, operator_factory
from tests.relay.integration.conftest import MX_HOST, Pool, pool_factory, relays, routed_pool

__all__ = [
    "broken_stack",
    "count",
    "crds",
    "env_for",
    "faulty_receiver",
    "operator_factory",
    "pool_factory",
    "relays",
    "routed_pool",
]

RESTARTABLE = ("kafka", "kube-apiserver", "dnsmasq")
# kafka-python 3 can leave a connection's socket to the garbage collector when a
# client is closed while a metadata refresh is in flight ("Metadata refresh:
# failed Cancelled"); on a loaded machine, with events read every poll of a
# wait, the fault tests met it in random places. The relays run in their own
# processes, so in these tests an unclosed socket is always the test's own
# Kafka client: not what the suite tests, and not a warning to fail on.
KAFKA_CLIENT_SOCKET_LEAK = (
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.filterwarnings(KAFKA_CLIENT_SOCKET_LEAK))


@pytest.fixture
def broken_stack(devstack: Stack) -> Iterator[Stack]:
    """The shared stack, to stop components of; each is running again after the test."""
    try:
        yield devstack
    finally:
        for name in RESTARTABLE:
            devstack.start_component(name)
        # kafka-python leaves the sockets of connections that failed during the
        # outage to the garbage collector; collect them here, quietly, not as a
        # ResourceWarning in whatever test runs next (see devstack kafka.is_ready).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def count(pool: Pool, sent: list[str], received: list[str]) -> Tally:
    """The tally of one pool: `sent` recipients, the MTAs' `received` copies and
    the pool's events topic."""
    return tally(
        sent, received, decode_events(v for _, v in pool.read(pool.config.kafka.events_topic))
    )


CountFn = Callable[[Pool, list[str], list[str]], Tally]


@pytest.fixture
def faulty_receiver() -> Iterator[Callable[[Faults], FaultyReceiver]]:
    """Factory of receivers with `Faults` on the MX loopback address; stopped after the test."""
    started: list[FaultyReceiver] = []

    def make(faults: Faults) -> FaultyReceiver:
        rx = FaultyReceiver(MX_HOST, free_port(MX_HOST), faults)
        started.append(rx.start())
        return rx

    yield make
    for rx in started:
        rx.stop()
