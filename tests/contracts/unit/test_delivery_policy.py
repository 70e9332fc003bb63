"""The pool's delivery settings: RFC 5321 timeouts by default, private destinations off,
and what a SendingPool says about them is what its relays' config says."""

from __future__ import annotations

from typing import Any

import pytest

from mailpipe.contracts.config import parse_config
from mailpipe.contracts.delivery import DeliveryPolicy, SMTPTimeouts
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import PoolRef, build_children


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
    with pytest.raises(ValueError, match=r"allowedNetworks|allowed_networks"):
        DeliveryPolicy.model_validate({"allowedNetworks": [bad]})


def _pool(**extra: Any) -> SendingPoolSpec:
    base: dict[str, Any] = {
        "kafka": {"bootstrapServers": "kafka:9092"},
        "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
    }
    return SendingPoolSpec.model_validate({**base, **extra})


def test_a_pools_delivery_settings_reach_its_relays_config() -> None:
    s = _pool(
        delivery={
            "timeouts": {"greetingSeconds": 42},
            "stallBudgetSeconds": 7,
            "allowedNetworks": ["10.1.0.0/16"],
        },
        routes={"smart.test": [{"host": "10.1.2.3"}]},  # allowed by the network above
    )
    text, _ = build_children(PoolRef("news", "mail", "uid-1"), s)
    config = parse_config(text)
    assert config.delivery.timeouts.greeting_seconds == 42
    assert config.delivery.timeouts.rcpt_seconds == 300  # the RFC's, where the pool says nothing
    assert config.delivery.stall_budget_seconds == 7
    assert config.delivery.allowed_networks == ["10.1.0.0/16"]


def test_a_pool_routing_to_an_internal_address_without_the_opt_in_is_refused() -> None:
    with pytest.raises(ValueError, match=r"routes\[smart.test\] host 10.1.2.3 is a private"):
        _pool(routes={"smart.test": [{"host": "10.1.2.3"}]})
