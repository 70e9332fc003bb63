"""Operator integration harness: CRDs on the real apiserver, the operator as a process."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailpipe.devstack import harness
from mailpipe.devstack.harness import Child, Children, kubectl
from mailpipe.devstack.harness import get_object as get
from mailpipe.devstack.procs import free_port
from tests.conftest import wait_for

__all__ = ["OperatorProcess", "get", "kubectl", "pool_manifest", "relays_up", "wait_for"]

ROOT = Path(__file__).resolve().parents[3]
PARTITIONS = 3
DELAY_STEPS = ["1s", "1m"]
POOL_READY_SECONDS = 60  # topics created and children applied, on a loaded machine
# An operator stuck in a Kafka call to a broker that is gone or refuses it used
# to hold every such test's teardown for the full 30 s grace.
OPERATOR_TEARDOWN_GRACE_SECONDS = 5.0

OperatorProcess = Child  # a `mailpipe operator` child of the test


@pytest.fixture(scope="session")
def crds(cli_env: dict[str, str]) -> None:
    harness.apply_crds(cli_env, ROOT / "crds")


@pytest.fixture
def operator_factory(
    crds: None, cli_env: dict[str, str], namespace: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Starts `mailpipe operator` children watching the test's namespace; after the
    test, each is stopped and, if it has not exited within the teardown grace,
    killed (nothing here is about its shutdown: that is tested where it is the
    point)."""
    with Children(tmp_path, stop_grace_seconds=OPERATOR_TEARDOWN_GRACE_SECONDS) as children:

        def make(**extra_env: str) -> OperatorProcess:
            args = ["operator", "--namespace", namespace, "--liveness-port", str(free_port())]
            name = f"operator-{len(children.started)}"
            return children.mailpipe(name, args, {**cli_env, **extra_env})

        yield make


def pool_manifest(name: str, namespace: str, bootstrap: str, prefix: str, **spec: Any) -> str:
    body: dict[str, Any] = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "kafka": {
                "bootstrapServers": bootstrap,
                "topicPrefix": prefix,
                "partitions": PARTITIONS,
                "delaySteps": DELAY_STEPS,
            },
            "egressIPs": [{"address": "127.0.0.2", "helo": "egress-2.sender.test"}],
            **spec,
        },
    }
    return yaml.safe_dump(body)


@pytest.fixture
def env_for(cli_env: dict[str, str]) -> dict[str, str]:
    return dict(os.environ) | cli_env


def relays_up(
    env: dict[str, str], namespace: str, op: Child, name: str = "news", available: int | None = None
) -> None:
    """Play the kubelet: once the pool's relay Deployment exists, report `available`
    relays (default: all) in its status, as the Deployment controller would."""
    deployment = f"mailpipe-relay-{name}"
    wait_for(lambda: get(env, "deployment", deployment, namespace) is not None, 60, "relays", op)
    harness.report_deployment(env, namespace, deployment, available)


def wait_pool_ready(env: dict[str, str], namespace: str, op: Child, name: str = "news") -> None:
    """Until the SendingPool `name` reports Ready=True (or the operator dies).

    Ready needs available relays, and the dev stack runs no kubelet: this
    reports them (`relays_up`)."""
    relays_up(env, namespace, op, name)
    wait_for(
        lambda: harness.condition_true(get(env, "sp", name, namespace)),
        POOL_READY_SECONDS,
        "pool Ready",
        op,
    )


def ready_pool(env: dict[str, str], namespace: str, bootstrap: str, prefix: str, op: Child) -> None:
    """Apply the test pool "news" and wait until it is Ready."""
    manifest = pool_manifest("news", namespace, bootstrap, prefix)
    assert kubectl(env, "apply", "-f", "-", stdin=manifest).returncode == 0
    wait_pool_ready(env, namespace, op)


@pytest.fixture
def ready_operator(
    operator_factory: Callable[..., Child],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> Child:
    """A running operator with the test pool "news" applied and Ready."""
    op = operator_factory()
    ready_pool(cli_env, namespace, kafka_bootstrap, topic_prefix, op)
    return op
