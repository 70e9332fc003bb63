"""The pool's delivery settings: RFC 5321 timeouts by default, private destinations off."""

from __future__ import annotations

import pytest

from mailpipe.contracts.delivery import DeliveryPolicy, SMTPTimeouts


def test_stage_timeouts_default_to_rfc_5321_section_4_5_3_2() -> None:
    t = SMTPTimeouts()
    minutes = {
        "greeting_seconds": 5,
        "ehlo_seconds": 5,
        "mail_seconds": 5,
        "rcpt_seconds": 5,
        "data_init_seconds": 2,
        "data_block_seconds": 3,
        "data_termination_seconds": 10,
    }
    assert {k: getattr(t, k) / 60 for k in minutes} == minutes


def test_private_destinations_are_refused_unless_a_pool_says_so() -> None:
    assert DeliveryPolicy().allow_private_destinations is False
    assert DeliveryPolicy().allowed_networks == []
    camel = DeliveryPolicy.model_validate(
        {"allowPrivateDestinations": True, "allowedNetworks": ["10.0.0.0/8"]}
    )
    assert camel.allow_private_destinations and camel.allowed_networks == ["10.0.0.0/8"]


@pytest.mark.parametrize("bad", ["10.0.0.0", "10.0.0.0/33", "fd00::/129", "x/8"])
def test_allowed_networks_are_cidr_networks(bad: str) -> None:
    with pytest.raises(ValueError, match="allowedNetworks|allowed_networks"):
        DeliveryPolicy.model_validate({"allowedNetworks": [bad]})
