"""Issue 22 Deliver 1: TLS modes per pool, overridable per site (`spec.tls.sites`).

A site is a recipient domain or a domain group name, as in `throttles.overrides`.
The operator's model refuses what the relay config would (a site's mode
contradicting its `verify`, a group no `domainGroups` defines, `dane` without
`dnsNameserver`) naming the site and what to write instead; the CRD carries
the same rules as CEL (tests/operator/integration/test_operator.py applies
them); the sites reach the relay config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from mailpipe.contracts.config import TLSMode, parse_config
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import PoolRef, build_children

REF = PoolRef("news", "mail", "uid-1")
CRDS = Path(__file__).resolve().parents[3] / "crds"
GROUPS = {"gmail": ["gmail.com", "googlemail.com"]}


def spec(**extra: Any) -> SendingPoolSpec:
    return SendingPoolSpec.model_validate(
        {
            "kafka": {"bootstrapServers": "k:9092"},
            "egressIPs": [{"address": "192.0.2.10", "helo": "mta1.example.com"}],
            **extra,
        }
    )


def test_sites_reach_the_relay_config_and_decide_per_destination() -> None:
    pool = spec(
        domainGroups=GROUPS,
        tls={
            "mode": "opportunistic",
            "caBundle": {"configMap": "partners-ca"},  # used by the verifying site
            "sites": {"gmail": {"mode": "mta-sts"}, "partner.example": {"mode": "verify"}},
        },
    )
    config = parse_config(build_children(REF, pool)[0])
    assert config.tls.ca_file == "/etc/mailpipe/tls-ca/ca.crt"
    modes = {d: config.tls_for(d).applied for d in ("googlemail.com", "partner.example", "a.test")}
    assert modes == {
        "googlemail.com": TLSMode.MTA_STS,
        "partner.example": TLSMode.VERIFY,
        "a.test": TLSMode.OPPORTUNISTIC,
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"tls": {"sites": {"partner.example": {"mode": "opportunistic", "verify": True}}}},
            r"tls\.sites\.partner\.example\.verify: true contradicts mode opportunistic "
            r"\(which never verifies\); use mode: verify",
        ),
        (
            {"tls": {"sites": {"partner.example": {"mode": "dane", "verify": True}}}},
            r"tls\.sites\.partner\.example\.verify: true contradicts mode dane",
        ),
        (
            {"domainGroups": GROUPS, "tls": {"sites": {"gmial": {"mode": "verify"}}}},
            r"tls\.sites\.gmial names no domain group defined in domainGroups",
        ),
        (
            {"tls": {"sites": {"partner.example": {"mode": "dane"}}}},
            r"tls\.sites\.partner\.example\.mode dane trusts the AD bit.*set dnsNameserver",
        ),
        (
            {"tls": {"caBundle": {"secret": "ca"}, "sites": {"a.example": {"mode": "required"}}}},
            r"only used to verify certificates.*use mode: verify or mta-sts",
        ),
    ],
    ids=["verify-opportunistic", "verify-dane", "unknown-group", "dane-no-resolver", "bundle"],
)
def test_a_bad_site_is_refused_naming_it_and_what_to_use(
    extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**extra)


def test_a_dane_site_with_the_pools_resolver_is_accepted() -> None:
    pool = spec(dnsNameserver="10.0.0.53:53", tls={"sites": {"p.example": {"mode": "dane"}}})
    assert pool.tls.sites["p.example"].mode is TLSMode.DANE


def test_the_crd_carries_the_site_rules_naming_the_site() -> None:
    crd = yaml.safe_load((CRDS / "sendingpools.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    tls = schema["properties"]["tls"]
    site = tls["properties"]["sites"]["additionalProperties"]
    assert "mta-sts" in site["properties"]["mode"]["enum"] and site["required"] == ["mode"]
    rules = tls["x-kubernetes-validations"] + schema["x-kubernetes-validations"]
    named = [r for r in rules if "self.sites" in r["rule"] or "self.tls.sites" in r["rule"]]
    # verify contradiction, lower case, dane resolver, unknown group: each names its site
    assert len([r for r in named if "'tls.sites.' +" in r.get("messageExpression", "")]) == 4
    bundle = next(r for r in tls["x-kubernetes-validations"] if "caBundle" in r["rule"])
    assert "self.sites.exists" in bundle["rule"]  # a verifying site uses the bundle
