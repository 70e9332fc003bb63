"""Issue 17: a pool's children are the operator's. Which live differences are changes
(`child_drift`), and the signature the relays check (`config_signing`), as pure decisions."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mailpipe.contracts.signing import (
    DIGEST_ENV,
    PUBLIC_KEY_ENV,
    ConfigSigner,
    ConfigVerifier,
    config_digest,
    trusted_config,
)
from mailpipe.operator import child_drift
from mailpipe.operator.config_signing import SIGNATURE_KEY, signed
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import CONFIG_KEY, PoolRef, build_children

pytestmark = pytest.mark.security

REF = PoolRef("news", "team-a", "uid-1")


def _children() -> tuple[str, list[dict[str, Any]]]:
    spec = SendingPoolSpec.model_validate(
        {
            "kafka": {"bootstrapServers": "kafka:9092"},
            "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
        }
    )
    return build_children(REF, spec)


def _kind(children: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(c for c in children if c["kind"] == kind)


def _as_served(obj: dict[str, Any]) -> dict[str, Any]:
    """What the apiserver gives back: the rendered object plus its own defaults."""
    live = copy.deepcopy(obj)
    live["metadata"] |= {"resourceVersion": "7", "uid": "x", "managedFields": [{}]}
    if obj["kind"] == "Service":
        live["spec"] |= {"clusterIP": "10.96.0.7", "type": "ClusterIP"}
        for port in live["spec"]["ports"]:
            port["protocol"] = "TCP"
    if obj["kind"] == "PodDisruptionBudget":
        live["status"] = {"currentHealthy": 1}
    return live


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    *parents, last = path.split("/")
    node = out
    for p in parents:
        node = node[p]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(
    ("kind", "path", "value", "expected"),
    [
        ("ConfigMap", "data/" + CONFIG_KEY, "routes: {evil: x}", ["data.relay.yaml"]),
        ("ConfigMap", "data/" + CONFIG_KEY, None, ["data.relay.yaml"]),
        ("ConfigMap", "data/extra", "x", ["data.extra"]),
        ("ConfigMap", "metadata/ownerReferences", None, ["ownerReferences"]),
        (
            "Service",
            "spec/selector",
            {"mailpipe.io/pool": "other"},
            ["spec.selector.mailpipe.io/pool", "spec.selector.app.kubernetes.io/component"],
        ),
        ("PodDisruptionBudget", "spec/maxUnavailable", 0, ["spec.maxUnavailable"]),
    ],
    ids=["config-edited", "config-removed", "key-added", "owner-removed", "svc", "pdb"],
)
def test_what_is_a_change(kind: str, path: str, value: Any, expected: list[str]) -> None:
    _, children = _children()
    desired = _kind(children, kind)
    assert child_drift.changes(desired, _set(_as_served(desired), path, value)) == expected


@pytest.mark.parametrize("kind", child_drift.GUARDED_KINDS)
def test_the_apiservers_defaults_are_not_a_change(kind: str) -> None:
    _, children = _children()
    desired = _kind(children, kind)
    assert child_drift.changes(desired, _as_served(desired)) == []
    assert child_drift.changes(desired, None) == ["deleted"]


def test_a_label_removed_is_a_change() -> None:
    """The operator finds its children by label."""
    _, children = _children()
    desired = _kind(children, "Service")
    live = _as_served(desired)
    del live["metadata"]["labels"]["mailpipe.io/pool"]
    assert child_drift.changes(desired, live) == ["metadata.labels.mailpipe.io/pool"]


def test_keys_someone_else_added_are_found_for_removal() -> None:
    _, children = _children()
    desired = _kind(children, "ConfigMap")
    live = _set(_as_served(desired), "data/extra", "x")
    assert child_drift.foreign_keys(desired, live) == ["extra"]
    assert child_drift.foreign_keys(desired, _as_served(desired)) == []


def test_the_rendered_config_is_signed_and_the_relay_gets_only_the_public_key() -> None:
    text, children = _children()
    signer = ConfigSigner.generate()
    out = signed(children, text, signer)
    configmap, deployment = _kind(out, "ConfigMap"), _kind(out, "Deployment")
    verifier = ConfigVerifier.from_base64(signer.public_key, "team-a/news", config_digest(text))
    config = trusted_config(
        configmap["data"][CONFIG_KEY], configmap["data"][SIGNATURE_KEY], verifier
    )
    assert config.pool == "team-a/news"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[PUBLIC_KEY_ENV] == signer.public_key
    assert env[DIGEST_ENV] == config_digest(text)  # the one config these relays run
    assert "PRIVATE" not in repr(out)
    assert signed(children, text, signer) == out, "the same config renders the same children"
    assert signed(children, text, None) == children
