"""A cluster policy changed under running pools (issue 11, Deliver 3), as pure decisions:
which pools a change refuses or allows again, a pool judged whole, and the
mounted policy file re-read across the kubelet's atomic swap."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailpipe.operator import kube_io
from mailpipe.operator.cluster_policy import (
    ClusterPolicy,
    PolicyChange,
    PolicyError,
    PolicyFile,
    policy_changes,
)
from mailpipe.operator.handlers import policy, pool
from mailpipe.operator.handlers.context import OperatorState
from mailpipe.operator.handlers.scale import running_replicas
from mailpipe.operator.models import SendingPoolSpec
from tests.operator.configmap_volume import write_configmap_volume

pytestmark = pytest.mark.security

KAFKA = "kafka.mailpipe.svc:9092"
LOOSE = ClusterPolicy(allowed_bootstrap_servers=[KAFKA], allowed_routes=["*.mail.svc:587"])


def spec(**extra: Any) -> SendingPoolSpec:
    base: dict[str, Any] = {
        "kafka": {"bootstrapServers": KAFKA},
        "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
    }
    return SendingPoolSpec.model_validate(base | extra)


TWO_ROUTES = spec(
    routes={
        "gmail.test": [{"host": "smarthost.mail.svc", "port": 587}],
        "yahoo.test": [{"host": "other.mail.svc", "port": 587}],
    }
)


def test_a_tightened_policy_names_the_pools_it_now_refuses_and_only_those() -> None:
    routed = spec(routes={"gmail.test": [{"host": "smarthost.mail.svc", "port": 587}]})
    plain = spec()
    tight = LOOSE.model_copy(update={"allowed_routes": []})
    changes = policy_changes(LOOSE, tight, [("sec", "routed", routed), ("sec", "plain", plain)])
    refused = "route gmail.test -> smarthost.mail.svc:587 not in allowed routes (none)"
    assert changes == [PolicyChange("sec/routed", (), (refused,))]
    assert changes[0].refused
    assert changes[0].describe() == f"sec/routed: now refused, relays scaled to 0: {refused}"
    # loosened again: the same pool, allowed, relays back
    [back] = policy_changes(tight, LOOSE, [("sec", "routed", routed), ("sec", "plain", plain)])
    assert back.pool == "sec/routed" and not back.refused
    assert back.describe() == "sec/routed: allowed again, relays back to spec.replicas"


def test_a_pool_partly_allowed_is_refused_whole() -> None:
    """One route of two allowed: the pool is refused, not run with half its routes."""
    only_gmail_hop = LOOSE.model_copy(update={"allowed_routes": ["smarthost.mail.svc:587"]})
    [change] = policy_changes(LOOSE, only_gmail_hop, [("sec", "p", TWO_ROUTES)])
    assert change.refused
    assert change.after == (
        "route yahoo.test -> other.mail.svc:587 not in allowed routes (smarthost.mail.svc:587)",
    )


def test_each_tightened_field_refuses_a_running_pool() -> None:
    """Kafka, image, resolver, SMTP port, hostNetwork, inward delivery: each one
    that a new policy stops allowing is a change for the pool that uses it."""
    unrestricted = ClusterPolicy.unrestricted()
    pools = {
        "kafka": spec(),
        "image": spec(image="reg.example/mp:1"),
        "resolver": spec(dnsNameserver="10.96.0.10:53"),
        "port": spec(smtpPort=2525),
        "hostnet": spec(hostNetwork=True),
        "inward": spec(delivery={"allowPrivateDestinations": True}),
    }
    restrictive = ClusterPolicy()  # every key at its restrictive default
    changes = policy_changes(unrestricted, restrictive, [("t", n, s) for n, s in pools.items()])
    assert [c.pool for c in changes] == [f"t/{n}" for n in pools]
    assert all(c.refused for c in changes)


def test_a_pool_still_refused_for_another_reason_is_a_change() -> None:
    """Its message must follow (Ready names what is refused now)."""
    a = ClusterPolicy(allowed_bootstrap_servers=[], allowed_smtp_ports=[25])
    b = ClusterPolicy(allowed_bootstrap_servers=[], allowed_smtp_ports=[])
    [change] = policy_changes(a, b, [("t", "p", spec())])
    assert change.before != change.after and change.refused
    assert change.describe().startswith("t/p: still refused: ")
    assert policy_changes(a, a, [("t", "p", spec())]) == []


def test_the_mounted_policy_is_re_read_across_the_kubelets_atomic_swap(tmp_path: Path) -> None:
    volume = tmp_path / "policy"

    def mount(policy: dict[str, Any] | str) -> None:
        text = policy if isinstance(policy, str) else yaml.safe_dump(policy)
        write_configmap_volume(volume, {"policy.yaml": text})

    mount({"allowedBootstrapServers": [KAFKA], "allowedRoutes": ["*"]})
    source = PolicyFile.open(str(volume / "policy.yaml"))
    assert source.policy.allowed_routes == ["*"]
    assert source.reread() is None  # unchanged: nothing to do
    mount({"allowedBootstrapServers": [KAFKA], "allowedRoutes": []})
    new = source.reread()
    assert new is not None and new.allowed_routes == [] and source.policy == new
    # the same rules written differently are no change
    mount(f"allowedRoutes: []\nallowedBootstrapServers: ['{KAFKA}']\n")
    assert source.reread() is None
    # a typo is reported once; the policy in force stays
    mount({"allowedBootstrapServers": [KAFKA], "allowedRoute": ["*"]})
    with pytest.raises(PolicyError, match="allowedRoute"):
        source.reread()
    assert source.reread() is None and source.policy == new
    mount({"allowedBootstrapServers": [KAFKA], "allowedRoutes": ["*"]})
    fixed = source.reread()
    assert fixed is not None and fixed.allowed_routes == ["*"]


def test_a_deployment_without_replicas_runs_one() -> None:
    assert running_replicas(None) == 0
    assert running_replicas({"spec": {}}) == 1  # the API's default
    assert running_replicas({"spec": {"replicas": 0}}) == 0
    assert running_replicas({"spec": {"replicas": 3}}) == 3


async def test_a_policy_change_is_in_force_at_once_and_reconciles_only_the_pools_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower (handlers.policy.follow) against fake API calls: the new policy
    is the state's before any pool is re-checked; the pools whose verdict did not
    change are not touched; a re-check that could not list the pools is retried."""
    base = spec().model_dump(by_alias=True, exclude_defaults=True)
    routed = {"gmail.test": [{"host": "smarthost.mail.svc", "port": 587}]}
    objects = [
        {"metadata": {"name": "routed"}, "spec": {**base, "routes": routed}},
        {"metadata": {"name": "plain"}, "spec": base},
    ]
    listings = {"n": 0}

    class Listing(kube_io.Kube):
        def list_pools(self, namespace: str) -> list[dict[str, Any]]:
            listings["n"] += 1
            if listings["n"] == 1:
                raise ConnectionError("API server away")
            return objects

    reconciled: list[tuple[str, ClusterPolicy]] = []
    state = OperatorState(kube=Listing())

    async def reconcile(st: OperatorState, namespace: str, name: str, **_: Any) -> pool.Outcome:
        reconciled.append((f"{namespace}/{name}", st.policy))
        return pool.Outcome()

    monkeypatch.setattr(pool, "reconcile", reconcile)
    monkeypatch.setattr(policy, "POLICY_RECHECK_SECONDS", 0.01)

    volume = tmp_path / "policy"
    write_configmap_volume(volume, {"policy.yaml": yaml.safe_dump(LOOSE.model_dump(by_alias=True))})
    source = PolicyFile.open(str(volume / "policy.yaml"))
    state.policy = source.policy
    state.pools = {"sec/routed", "sec/plain"}
    task = asyncio.create_task(policy.follow(state, source))
    try:
        tight = LOOSE.model_copy(update={"allowed_routes": []})
        write_configmap_volume(
            volume, {"policy.yaml": yaml.safe_dump(tight.model_dump(by_alias=True))}
        )
        for _ in range(500):
            if reconciled:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert state.policy == tight
    assert listings["n"] >= 2  # the failed listing was retried
    assert reconciled == [("sec/routed", tight)]  # only the pool it refuses, judged by the new one
