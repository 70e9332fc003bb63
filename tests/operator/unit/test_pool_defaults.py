"""The chart's image, pull secrets and Kafka reach the relays of pools that leave them unset.

The chart hands them to the operator as environment variables
(`mailpipe.operator.defaults`); a pool's own values win. Rendered through
`build_children`, so the assertion is on the Deployment the operator writes.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mailpipe.operator.defaults import (
    BUILTIN_IMAGE,
    ENV_IMAGE,
    ENV_KAFKA,
    ENV_PULL_SECRETS,
    PoolDefaults,
)
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import PoolRef, build_children, build_relay_config

REF = PoolRef("news", "mail", "uid-1")
CHART_ENV = {
    ENV_IMAGE: "registry.example.com/mailpipe:1.2.3",
    ENV_PULL_SECRETS: "regcred, other-cred",
    ENV_KAFKA: "kafka.kafka.svc:9092",
}
EGRESS = [{"address": "10.0.0.5", "helo": "mta1.example.com"}]


def parse(spec: dict[str, Any], env: dict[str, str]) -> SendingPoolSpec:
    return SendingPoolSpec.model_validate(spec, context=PoolDefaults.from_env(env).context())


def pod_of(spec: SendingPoolSpec) -> dict[str, Any]:
    _, children = build_children(REF, spec)
    dep = next(c for c in children if c["kind"] == "Deployment")
    pod: dict[str, Any] = dep["spec"]["template"]["spec"]
    return pod


def test_a_pool_without_image_gets_the_charts_image_and_pull_secrets() -> None:
    pod = pod_of(parse({"egressIPs": EGRESS}, CHART_ENV))
    assert pod["containers"][0]["image"] == "registry.example.com/mailpipe:1.2.3"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other-cred"}]


def test_a_pool_without_kafka_uses_the_charts_bootstrap_servers() -> None:
    spec = parse({"egressIPs": EGRESS, "kafka": {"partitions": 3}}, CHART_ENV)
    assert build_relay_config(REF, spec).kafka.bootstrap_servers == "kafka.kafka.svc:9092"
    assert spec.kafka.partitions == 3


def test_the_pools_own_values_win() -> None:
    spec = parse(
        {
            "egressIPs": EGRESS,
            "image": "mine:9",
            "imagePullSecrets": [{"name": "mine"}],
            "kafka": {"bootstrapServers": "other:9092"},
        },
        CHART_ENV,
    )
    pod = pod_of(spec)
    assert pod["containers"][0]["image"] == "mine:9"
    assert pod["imagePullSecrets"] == [{"name": "mine"}]
    assert spec.kafka.bootstrap_servers == "other:9092"


def test_without_the_charts_environment_the_builtin_image_and_no_pull_secrets() -> None:
    pod = pod_of(parse({"egressIPs": EGRESS, "kafka": {"bootstrapServers": "k:9092"}}, {}))
    assert pod["containers"][0]["image"] == BUILTIN_IMAGE
    assert "imagePullSecrets" not in pod


def test_no_kafka_anywhere_is_an_invalid_spec_naming_the_chart_value() -> None:
    with pytest.raises(ValidationError, match=r"chart value kafka\.bootstrapServers"):
        parse({"egressIPs": EGRESS}, {})
