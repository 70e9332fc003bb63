"""Issue 11, Deliver 3, on what already runs: tightening the cluster policy stops relays.

The finding: a SendingPool admitted under the platform's cluster policy keeps
its relays sending after the policy is tightened to refuse it (its route, its
Kafka, its image...). The pool was reported Ready=False `PolicyViolation`, but
its relay Deployment stayed at spec.replicas, sending with what the policy now
forbids, and the operator learnt of the change only when restarted.

Here the policy file is mounted as the kubelet mounts a ConfigMap volume
(`tests/operator/configmap_volume.py`, `write_configmap_volume`: an atomic `..data` swap),
changed under the running operator, and the relay Deployment must follow:
scaled to 0 (the object kept), Ready=False with the reason, a Warning Event,
scale status 0; neither a `kubectl scale` of the pool nor of its Deployment
brings the relays back; loosening the policy brings them back to
spec.replicas and the pool Ready again. The dev stack runs no Deployment
controller: the test reports the Deployment's status as it would
(`harness.report_deployment`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailpipe.devstack import harness
from tests.operator.configmap_volume import write_configmap_volume

from .conftest import OperatorProcess, get, kubectl, pool_manifest, wait_for, wait_pool_ready

pytestmark = [pytest.mark.operator, pytest.mark.security]

# The operator re-reads the policy every 5 s (handlers/policy.py); this bound
# leaves room for a loaded machine, it is not a performance assertion.
POLICY_ROLL_SECONDS = 60
ROUTE = {"gmail.test": [{"host": "smarthost.example", "port": 587}]}
ROUTE_REFUSED = "route gmail.test -> smarthost.example:587 not in allowed routes (none)"
DEPLOYMENT = "mailpipe-relay-news"


def _write_policy(volume: Path, bootstrap: str, routes: list[str]) -> Path:
    policy = {
        "allowedImages": ["mailpipe.local/mailpipe:*"],
        "allowedBootstrapServers": [bootstrap],
        "allowedSmtpPorts": [25],
        "allowedRoutes": routes,
    }
    write_configmap_volume(volume, {"policy.yaml": yaml.safe_dump(policy)})
    return volume / "policy.yaml"


def _ready(env: dict[str, str], namespace: str) -> dict[str, Any]:
    conditions = (get(env, "sp", "news", namespace) or {}).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def _replicas(env: dict[str, str], namespace: str) -> int | None:
    dep = get(env, "deployment", DEPLOYMENT, namespace)
    return None if dep is None else int(dep["spec"].get("replicas", 1))


def _warnings(env: dict[str, str], namespace: str) -> set[str]:
    """Reasons of the Warning Events about the pool."""
    got = harness.get_json(
        env,
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.kind=SendingPool,involvedObject.name=news,type=Warning",
    )
    return {e.get("reason") for e in got["items"]}


def _controller_reports(env: dict[str, str], namespace: str) -> None:
    """What the Deployment controller and kubelet would report for the live spec."""
    harness.report_deployment(env, namespace, DEPLOYMENT)


def test_tightening_the_policy_stops_running_relays_and_loosening_brings_them_back(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    env, ns = cli_env, namespace
    volume = tmp_path / "policy-volume"
    path = _write_policy(volume, kafka_bootstrap, ["smarthost.example:*"])
    op = operator_factory(MAILPIPE_POLICY=str(path))
    manifest = pool_manifest(
        "news", ns, kafka_bootstrap, f"mailpipe.{ns}.news", replicas=2, routes=ROUTE
    )
    assert kubectl(env, "apply", "-f", "-", stdin=manifest).returncode == 0
    wait_pool_ready(env, ns, op)  # admitted, two relays running
    uid = get(env, "deployment", DEPLOYMENT, ns)["metadata"]["uid"]  # type: ignore[index]

    # The platform team tightens the policy: the pool's route is no longer allowed.
    _write_policy(volume, kafka_bootstrap, [])
    tightened_at = time.monotonic()
    wait_for(
        lambda: _replicas(env, ns) == 0,
        POLICY_ROLL_SECONDS,
        "the refused pool's relays scaled to 0",
        op,
    )
    # measured, not asserted (the bound above is the assertion): see the report
    print(f"policy tightened -> relays at 0 in {time.monotonic() - tightened_at:.1f}s")
    _controller_reports(env, ns)  # the relay pods are gone
    wait_for(
        lambda: _ready(env, ns).get("reason") == "PolicyViolation",
        POLICY_ROLL_SECONDS,
        "Ready=False PolicyViolation",
        op,
    )
    ready = _ready(env, ns)
    assert ready["status"] == "False" and ROUTE_REFUSED in ready["message"], ready
    dep = get(env, "deployment", DEPLOYMENT, ns)
    assert dep is not None and dep["metadata"]["uid"] == uid  # kept, only scaled
    wait_for(
        lambda: {"PolicyViolation", "RelaysStopped"} <= _warnings(env, ns),
        POLICY_ROLL_SECONDS,
        "Warning Events PolicyViolation and RelaysStopped on the pool",
        op,
    )
    wait_for(
        lambda: (get(env, "sp", "news", ns) or {}).get("status", {}).get("replicas") == 0,
        POLICY_ROLL_SECONDS,
        "scale status 0",
        op,
    )
    pool = get(env, "sp", "news", ns) or {}
    assert pool["status"]["relays"]["desired"] == 0, pool["status"]
    # the change's log names the pool it refused
    assert f"{ns}/news: now refused, relays scaled to 0: {ROUTE_REFUSED}" in op.log.read_text()

    # Nobody scales a refused pool back up: not a manual scale of its Deployment...
    harness.kubectl_ok(env, "scale", "deployment", DEPLOYMENT, "-n", ns, "--replicas=5")
    wait_for(lambda: _replicas(env, ns) == 0, POLICY_ROLL_SECONDS, "manual scale reverted", op)
    # ...nor the pool's scale subresource: the new spec.replicas waits for the policy.
    harness.kubectl_ok(env, "scale", "sp", "news", "-n", ns, "--replicas=3")
    generation = (get(env, "sp", "news", ns) or {})["metadata"]["generation"]
    wait_for(
        lambda: (
            (get(env, "sp", "news", ns) or {}).get("status", {}).get("observedGeneration")
            == generation
        ),
        POLICY_ROLL_SECONDS,
        "the scaled pool reconciled",
        op,
    )
    assert _replicas(env, ns) == 0
    assert _ready(env, ns).get("reason") == "PolicyViolation"

    # Loosened again: the same Deployment comes back at spec.replicas, Ready.
    _write_policy(volume, kafka_bootstrap, ["smarthost.example:*"])
    wait_for(
        lambda: _replicas(env, ns) == 3, POLICY_ROLL_SECONDS, "relays back at spec.replicas", op
    )

    def ready_again() -> bool:
        _controller_reports(env, ns)
        return _ready(env, ns).get("status") == "True"

    wait_for(ready_again, POLICY_ROLL_SECONDS, "Ready again", op)
    dep = get(env, "deployment", DEPLOYMENT, ns)
    assert dep is not None and dep["metadata"]["uid"] == uid


def test_an_operator_started_with_a_tighter_policy_stops_relays_it_finds_running(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    """The other way a policy changes: the operator restarted with the new one
    (a new operator version, a rescheduled pod). It finds the relays of a pool
    it now refuses already running, and stops them."""
    env, ns = cli_env, namespace
    allowed = _write_policy(tmp_path / "before", kafka_bootstrap, ["smarthost.example:*"])
    first = operator_factory(MAILPIPE_POLICY=str(allowed))
    manifest = pool_manifest("news", ns, kafka_bootstrap, f"mailpipe.{ns}.news", routes=ROUTE)
    assert kubectl(env, "apply", "-f", "-", stdin=manifest).returncode == 0
    wait_pool_ready(env, ns, first)
    first.stop()
    tight = _write_policy(tmp_path / "after", kafka_bootstrap, [])
    second = operator_factory(MAILPIPE_POLICY=str(tight))
    wait_for(lambda: _replicas(env, ns) == 0, POLICY_ROLL_SECONDS, "relays scaled to 0", second)
    _controller_reports(env, ns)
    wait_for(
        lambda: _ready(env, ns).get("reason") == "PolicyViolation",
        POLICY_ROLL_SECONDS,
        "Ready=False PolicyViolation",
        second,
    )
