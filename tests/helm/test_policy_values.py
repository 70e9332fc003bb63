"""The chart's `policy:` values (issue 11, point 3): what the platform team writes
is what the operator enforces, and a typo is refused before it reaches a cluster."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from mailpipe.operator.cluster_policy import ClusterPolicy
from tests.helm.test_chart import CHART, helm, render

pytestmark = pytest.mark.security


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def test_the_operator_reads_the_policy_the_values_say() -> None:
    docs = render(
        "policy.allowedBootstrapServers={kafka.kafka.svc:9092}",
        "policy.allowedSmtpPorts={25,2525}",
        "policy.hostNetworkNamespaces={mail-*}",
    )
    cm = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rel-mailpipe-policy"
    )
    policy = ClusterPolicy.model_validate(yaml.safe_load(cm["data"]["policy.yaml"]))
    assert policy.allowed_bootstrap_servers == ["kafka.kafka.svc:9092"]
    assert policy.allowed_smtp_ports == [25, 2525]
    assert policy.host_network_namespaces == ["mail-*"]
    assert policy.allowed_images == [
        "mailpipe.local/mailpipe:*",
        "mailpipe.local/mailpipe:0.1.0",
    ]
    assert policy.allowed_routes == [] and policy.allowed_dns_nameservers == []
    assert policy.private_destination_namespaces == []  # no inward delivery unless allowed


def test_the_charts_own_kafka_and_image_are_always_allowed() -> None:
    docs = render("kafka.bootstrapServers=k.kafka.svc:9092", "image.repository=reg.example/mp")
    cm = next(d for d in docs if d["metadata"]["name"] == "rel-mailpipe-policy")
    policy = ClusterPolicy.model_validate(yaml.safe_load(cm["data"]["policy.yaml"]))
    assert policy.allowed_bootstrap_servers == ["k.kafka.svc:9092"]
    assert "reg.example/mp:0.1.0" in policy.allowed_images
    pod = _one(docs, "Deployment")["spec"]["template"]
    [container] = pod["spec"]["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "policy")
    assert f"--policy={mount['mountPath']}/policy.yaml" in container["args"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "policy")
    assert volume["configMap"]["name"] == "rel-mailpipe-policy"
    # a policy change does not restart the operator (it re-reads the mounted file:
    # tests/operator/integration/test_policy_rollout.py): the pod template stays
    other = render(
        "kafka.bootstrapServers=k.kafka.svc:9092",
        "image.repository=reg.example/mp",
        "policy.allowedSmtpPorts={25,2525}",
    )
    assert _one(other, "Deployment")["spec"]["template"] == pod


def test_admission_policy_is_optional_and_a_typo_is_refused() -> None:
    assert not [d for d in render("policy.admission=false") if "Admission" in d["kind"]]
    typo = helm("template", "rel", str(CHART), "--set", "policy.allowedImage={x}")
    assert typo.returncode != 0 and "allowedImage" in typo.stderr
    port = helm("template", "rel", str(CHART), "--set", "policy.allowedSmtpPorts={70000}")
    assert port.returncode != 0
