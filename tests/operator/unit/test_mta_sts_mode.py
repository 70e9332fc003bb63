"""Issue 22 Deliver 1 and 3: a SendingPool may ask for `tls.mode: mta-sts`.

The mode reaches the relay config with the pool's CA bundle (used for MX
certificates where a policy enforces, and for the policy host's HTTPS
certificate); `verify: true` beside it is refused naming the mode to use,
by the operator's model and by the CRD's CEL rule alike.
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


def spec(**extra: Any) -> SendingPoolSpec:
    return SendingPoolSpec.model_validate(
        {
            "kafka": {"bootstrapServers": "k:9092"},
            "egressIPs": [{"address": "192.0.2.10", "helo": "mta1.example.com"}],
            **extra,
        }
    )


def test_mta_sts_with_a_ca_bundle_reaches_the_relay() -> None:
    text, _ = build_children(REF, spec(tls={"mode": "mta-sts", "caBundle": {"secret": "ca"}}))
    tls = parse_config(text).tls
    assert (tls.mode, tls.ca_file) == (TLSMode.MTA_STS, "/etc/mailpipe/tls-ca/ca.crt")


def test_mta_sts_with_verify_is_refused_naming_the_mode_to_use() -> None:
    with pytest.raises(ValidationError, match=r"contradicts mode mta-sts.*use mode: verify"):
        spec(tls={"mode": "mta-sts", "verify": True})


def test_the_crd_offers_the_mode_and_its_rules_say_the_same() -> None:
    crd = yaml.safe_load((CRDS / "sendingpools.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    tls = schema["properties"]["tls"]
    assert "mta-sts" in tls["properties"]["mode"]["enum"]
    rules = {r["rule"] for r in tls["x-kubernetes-validations"]}
    verify_rule = next(r for r in rules if r.startswith("!self.verify"))
    assert "mta-sts" not in verify_rule  # verify: true stays refused with mta-sts
    bundle_rule = next(r for r in rules if r.startswith("!has(self.caBundle)"))
    assert "self.mode == 'mta-sts'" in bundle_rule
