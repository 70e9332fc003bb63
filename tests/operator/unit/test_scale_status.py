"""The scale subresource's status, from the relay Deployment (handlers.scale)."""

from __future__ import annotations

from mailpipe.operator.handlers.scale import owning_pool, scale_status, selector_text
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import PoolRef, build_deployment


def test_the_pool_reports_the_relay_deployments_replicas_and_pod_selector() -> None:
    ref = PoolRef("news", "mail", "uid-1")
    spec = SendingPoolSpec.model_validate(
        {
            "replicas": 3,
            "kafka": {"bootstrapServers": "k:9092"},
            "egressIPs": [{"address": "127.0.0.2", "helo": "a.sender.test"}],
        }
    )
    deployment = build_deployment(ref, spec, "hash")
    assert scale_status(deployment) == {
        "replicas": 0,  # no pod yet: the Deployment has no status
        "selector": selector_text(deployment["spec"]["selector"]["matchLabels"]),
    }
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    selected = dict(kv.split("=") for kv in scale_status(deployment)["selector"].split(","))
    assert selected.items() <= pods.items(), "the selector must select the relay pods"
    assert scale_status({**deployment, "status": {"replicas": 2}})["replicas"] == 2
    assert owning_pool(deployment["metadata"]) == "news"
    assert owning_pool({"ownerReferences": [{"kind": "ReplicaSet", "name": "x"}]}) is None


def test_selectors_are_serialized_sorted() -> None:
    assert selector_text({"b": "2", "a": "1"}) == "a=1,b=2"
