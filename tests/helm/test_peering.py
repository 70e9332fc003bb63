"""`operator.replicas: 2` with peering, as the chart renders it.

What two operator pods do with it (one acts, a crash or a clean stop hands
over) runs on the stack's node: tests/cluster/test_peering_on_node.py.
"""

from __future__ import annotations

from pathlib import Path

from tests.helm.test_chart import helm, operator_container, render

CHART = Path(__file__).resolve().parents[2] / "helm" / "mailpipe"


def test_the_chart_names_each_peer_by_its_pod_and_passes_the_lifetime() -> None:
    docs = render("operator.replicas=2", "peering.enabled=true", "peering.lifetimeSeconds=45")
    container = operator_container(docs)
    assert "--peering-lifetime=45" in container["args"]
    pod_id = next(e for e in container["env"] if e["name"] == "POD_ID")  # kopf's identity
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "POD_ID" not in {e["name"] for e in operator_container(render())["env"]}


def test_a_lifetime_within_kopfs_renewal_margin_is_refused() -> None:
    out = helm("template", "rel", str(CHART), "--set", "peering.lifetimeSeconds=10")
    assert out.returncode != 0
    assert "lifetimeSeconds': minimum" in out.stderr, out.stderr
    render("peering.lifetimeSeconds=15")  # the minimum itself is fine
