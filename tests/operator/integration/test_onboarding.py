"""A namespace onboarded after its pool was created: the pool follows on its own.

The operator runs as the chart's ServiceAccount (a token kubeconfig, as a pod
would have), so RBAC is the chart's: it may watch pools everywhere but write
relays only in onboarded namespaces. RBAC changes are no event the operator
can watch; the README's `kubectl create rolebinding ...` must be enough, for
the pool and for a campaign whose audience ConfigMap it could not read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailpipe.devstack import harness, kube
from mailpipe.devstack.stack import StackState

from .conftest import OperatorProcess, get, kubectl, pool_manifest, relays_up, wait_for

pytestmark = [pytest.mark.operator, pytest.mark.security]

CHART = Path(__file__).resolve().parents[3] / "helm" / "mailpipe"
FORBIDDEN_SECONDS = 60  # the first reconcile, on a loaded machine
# The operator tries a Forbidden pool again every 5 s; this is that with room
# for a loaded machine, and far below the minutes a pool waited before.
ONBOARDED_SECONDS = 30


@pytest.fixture
def release(cli_env: dict[str, str], unique: str) -> Iterator[tuple[str, str]]:
    """The chart installed (no operator pod: the test runs it) in a namespace of
    its own, onboarding no tenant namespace (the default); (release, its namespace)."""
    name, system = f"onb-{unique}", f"onb-system-{unique}"
    harness.kubectl_ok(cli_env, "create", "namespace", system)
    installed = harness.helm(
        cli_env,
        "install",
        name,
        str(CHART),
        "-n",
        system,
        "--set",
        "operator.replicas=0",
        "--set",
        "policy.admission=false",
    )
    assert installed.returncode == 0, installed.stderr
    yield name, system
    harness.helm(cli_env, "uninstall", name, "-n", system, "--wait", "--no-hooks")
    kubectl(cli_env, "delete", "namespace", system, "--wait=false")


AUDIENCE = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "aud"},
    "data": {"audience.csv": "address\nann@x.test\n"},
}
CAMPAIGN = {
    "apiVersion": "mailpipe.io/v1alpha1",
    "kind": "Campaign",
    "metadata": {"name": "spring"},
    "spec": {
        "poolRef": "news",
        "from": {"address": "news@sender.test"},
        "subject": "Hello",
        "text": "Hi",
        "audience": {"configMapRef": {"name": "aud"}},
    },
}


def _fanout_message(env: dict[str, str], namespace: str) -> str:
    campaign = get(env, "camp", "spring", namespace) or {}
    return str(((campaign.get("status") or {}).get("fanout") or {}).get("message", ""))


def _ready(env: dict[str, str], namespace: str) -> dict[str, Any]:
    pool = get(env, "sp", "news", namespace) or {}
    conditions = (pool.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def _operator_as_the_charts_account(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    release: tuple[str, str],
    stack_state: StackState,
    tmp_path: Path,
) -> OperatorProcess:
    """An operator logged in with the chart ServiceAccount's token, as a pod would be."""
    name, system = release
    account = f"{name}-mailpipe-operator"
    token = harness.kubectl_ok(
        cli_env, "create", "token", account, "-n", system, "--duration=1h"
    ).strip()
    kubeconfig = tmp_path / "operator.kubeconfig"
    kube.write_token_kubeconfig(kubeconfig, Path(stack_state.kubeconfig), account, token)
    return operator_factory(KUBECONFIG=str(kubeconfig))


def test_a_namespace_onboarded_later_gets_its_relays_without_touching_the_pool(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    release: tuple[str, str],
    stack_state: StackState,
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    name, system = release
    op = _operator_as_the_charts_account(operator_factory, cli_env, release, stack_state, tmp_path)
    manifest = pool_manifest("news", namespace, kafka_bootstrap, topic_prefix)
    harness.kubectl_ok(cli_env, "apply", "-f", "-", stdin=manifest)
    for applied in (AUDIENCE, CAMPAIGN):
        harness.kubectl_ok(cli_env, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(applied))
    wait_for(
        lambda: _ready(cli_env, namespace).get("reason") == "Forbidden",
        FORBIDDEN_SECONDS,
        "Ready=False, Forbidden: the namespace is not onboarded",
        op,
    )
    # The campaign says why its audience cannot be checked (no traceback behind
    # "waiting for the pool").
    wait_for(
        lambda: "may not read ConfigMaps in namespace" in _fanout_message(cli_env, namespace),
        FORBIDDEN_SECONDS,
        f"the campaign saying its audience is not readable: {_fanout_message(cli_env, namespace)}",
        op,
    )
    # The README's onboarding line, for this release and namespace; nothing else.
    harness.kubectl_ok(
        cli_env,
        "create",
        "rolebinding",
        "mailpipe-operator",
        "-n",
        namespace,
        f"--clusterrole={name}-mailpipe-operator-workloads",
        f"--serviceaccount={system}:{name}-mailpipe-operator",
    )
    wait_for(
        lambda: get(cli_env, "deployment", "mailpipe-relay-news", namespace) is not None,
        ONBOARDED_SECONDS,
        f"relays created once onboarded; Ready is {_ready(cli_env, namespace)}",
        op,
    )
    wait_for(
        lambda: "audience checked: 1 recipients" in _fanout_message(cli_env, namespace),
        ONBOARDED_SECONDS,
        f"the audience checked once onboarded: {_fanout_message(cli_env, namespace)}",
        op,
    )
    relays_up(cli_env, namespace, op)
    wait_for(
        lambda: _ready(cli_env, namespace).get("status") == "True",
        ONBOARDED_SECONDS,
        f"Ready; last seen {_ready(cli_env, namespace)}",
        op,
    )


def _reasons(env: dict[str, str], namespace: str, name: str) -> list[str]:
    listed = harness.kubectl_ok(
        env,
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={name}",
        "-o",
        "json",
    )
    return [e["reason"] for e in json.loads(listed)["items"]]


def test_a_pool_deleted_in_a_namespace_never_onboarded_goes_with_a_warning(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    release: tuple[str, str],
    stack_state: StackState,
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    """The operator may not delete relays there (403): it cannot have made any, so
    holding the pool's finalizer would only hold the namespace in Terminating for
    ever. It says so in an Event and lets the pool go; no traceback."""
    op = _operator_as_the_charts_account(operator_factory, cli_env, release, stack_state, tmp_path)
    manifest = pool_manifest("news", namespace, kafka_bootstrap, topic_prefix)
    harness.kubectl_ok(cli_env, "apply", "-f", "-", stdin=manifest)
    wait_for(
        lambda: _ready(cli_env, namespace).get("reason") == "Forbidden",
        FORBIDDEN_SECONDS,
        "Ready=False, Forbidden: the namespace is not onboarded",
        op,
    )
    harness.kubectl_ok(cli_env, "delete", "sp", "news", "-n", namespace, "--wait=false")
    wait_for(
        lambda: get(cli_env, "sp", "news", namespace) is None,
        FORBIDDEN_SECONDS,
        "the pool gone (its finalizer released)",
        op,
    )
    assert "ChildrenLeftToGarbageCollector" in _reasons(cli_env, namespace, "news")
    assert "Traceback" not in op.log.read_text()
