"""Issue 17 in the chart: the key relay configs are signed with is the operator's alone, and
several tenant namespaces without Kafka logins are refused at install."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from mailpipe.contracts.signing import ConfigSigner
from tests.helm.test_chart import CHART, helm, operator_container, render

pytestmark = pytest.mark.security

KEY_ARG = "--config-signing-key=/etc/mailpipe/signing/ed25519.pem"


def _template(*sets: str) -> tuple[int, str]:
    args = ["template", "rel", str(CHART), "--namespace", "mailpipe-system"]
    for s in sets:
        args += ["--set", s]
    out = helm(*args)
    return out.returncode, out.stderr


@pytest.mark.parametrize(
    "sets",
    [
        ["rbac.tenantNamespaces={team-a,team-b}"],
        ["rbac.tenantNamespaces={*}"],
        ["operator.watchNamespaces={team-a,team-b}"],
    ],
    ids=["two-tenants", "every-namespace", "namespaced-operator"],
)
def test_several_tenants_without_kafka_logins_are_refused_with_the_way_out(
    sets: list[str],
) -> None:
    code, err = _template(*sets)
    assert code != 0
    assert "share Kafka with logins off" in err, err
    assert "--set policy.kafkaCredentialsRequired=true" in err
    assert "--set policy.allowTenantsWithoutKafkaLogins=true" in err
    for way_out in (
        "policy.kafkaCredentialsRequired=true",
        "policy.allowTenantsWithoutKafkaLogins=true",
    ):
        assert _template(*sets, way_out)[0] == 0, way_out


@pytest.mark.parametrize(
    "sets", [[], ["rbac.tenantNamespaces={mail}"], ["operator.watchNamespaces={mail}"]]
)
def test_one_tenant_installs_without_logins(sets: list[str]) -> None:
    code, err = _template(*sets)
    assert code == 0, err


def _signing_secret(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (secret,) = [
        d
        for d in docs
        if d["kind"] == "Secret" and d["metadata"]["name"] == "rel-mailpipe-config-signing"
    ]
    return secret


def test_the_signing_key_is_made_in_the_release_namespace_and_only_the_operator_mounts_it() -> None:
    docs = render()
    secret = _signing_secret(docs)
    assert secret["metadata"]["namespace"] == "mail"  # the release's, never a tenant's
    pem = base64.b64decode(secret["data"]["ed25519.pem"])
    assert ConfigSigner.from_pem(pem).public_key  # Ed25519, as the operator loads it
    assert KEY_ARG in operator_container(docs)["args"]
    mounting = [
        d["metadata"]["name"]
        for d in docs
        if "rel-mailpipe-config-signing" in str(d.get("spec", {}))
    ]
    assert mounting == ["rel-mailpipe-operator"]


def test_an_existing_secret_is_used_and_none_is_made() -> None:
    docs = render("configSigning.existingSecret=platform-signing")
    assert not [d for d in docs if d["kind"] == "Secret" and "signing" in d["metadata"]["name"]]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config-signing"]["secret"]["secretName"] == "platform-signing"
    assert KEY_ARG in operator_container(docs)["args"]
