"""The committed CRDs are exactly what the models generate."""

from __future__ import annotations

from pathlib import Path

import yaml

from mailpipe.contracts.delays import DELAY_STEP_PATTERN
from mailpipe.operator import crdgen

CRDS = Path(__file__).resolve().parents[3] / "crds"


def test_committed_crds_match_the_models() -> None:
    for name, text in crdgen.render().items():
        committed = (CRDS / name).read_text()
        assert committed == text, (
            f"crds/{name} is stale: run `python -m mailpipe.operator.crdgen crds`"
        )


def _walk(node: dict[str, object], path: str = "spec") -> list[str]:
    missing = []
    for key, sub in (node.get("properties") or {}).items():  # type: ignore[union-attr]
        assert isinstance(sub, dict)
        if "description" not in sub:
            missing.append(f"{path}.{key}")
        missing += _walk(sub, f"{path}.{key}")
        items = sub.get("items")
        if isinstance(items, dict):
            missing += _walk(items, f"{path}.{key}[]")
    return missing


def test_every_spec_field_is_described_and_structural() -> None:
    for name in ("sendingpools.yaml", "campaigns.yaml"):
        crd = yaml.safe_load((CRDS / name).read_text())
        version = crd["spec"]["versions"][0]
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        assert _walk(spec) == []
        text = (CRDS / name).read_text()
        assert (
            "$ref" not in text and "anyOf" not in text and "additionalProperties: false" not in text
        )
        assert crd["spec"]["names"]["categories"] == ["mailpipe"]
        assert version["subresources"]["status"] == {}


def test_pools_scale_through_the_scale_subresource() -> None:
    """`kubectl scale sp <pool> --replicas=N` needs the scale subresource; the
    operator reports status.replicas and status.selector (issue 12, point 5)."""
    pools = yaml.safe_load((CRDS / "sendingpools.yaml").read_text())
    camps = yaml.safe_load((CRDS / "campaigns.yaml").read_text())
    assert pools["spec"]["versions"][0]["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "scale" not in camps["spec"]["versions"][0]["subresources"]


def test_printer_columns() -> None:
    pools = yaml.safe_load((CRDS / "sendingpools.yaml").read_text())
    camps = yaml.safe_load((CRDS / "campaigns.yaml").read_text())
    cols = lambda crd: [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]  # noqa: E731
    assert cols(pools) == [
        "Ready",
        "Replicas",
        "Available",
        "IPs",
        "Warmup",
        "Sites",
        "Reason",
        "Endpoints",
        "Age",
    ]
    assert cols(camps) == ["Pool", "Phase", "Delivered", "Bounced", "Progress", "Age"]
    assert pools["spec"]["names"]["shortNames"] == ["sp"]
    assert camps["spec"]["names"]["shortNames"] == ["camp"]


def test_the_schema_refuses_what_the_relay_config_refuses() -> None:
    # A pool the apiserver accepts must render a relay config the relay accepts
    # (ARCHITECTURE.md, "Bad input gets a clear error").
    crd = yaml.safe_load((CRDS / "sendingpools.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    assert props["kafka"]["properties"]["delaySteps"]["items"]["pattern"] == DELAY_STEP_PATTERN
    egress = props["egressIPs"]
    assert egress["x-kubernetes-list-type"] == "map"
    assert egress["x-kubernetes-list-map-keys"] == ["address"]  # no address twice
    assert props["retry"]["properties"]["scheduleSeconds"]["items"]["minimum"] == 1
    step = props["warmup"]["properties"]["schedule"]["items"]["properties"]
    assert step["groupLimits"]["additionalProperties"]["minimum"] == 0
    assert "pattern" in props["warmup"]["properties"]["timeZone"]
