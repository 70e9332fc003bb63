"""The relay config: one validation pass that refuses anything the relay cannot run."""

from __future__ import annotations

import pytest
import yaml

from mailpipe.contracts import config, policy
from mailpipe.contracts.config import ConfigError, RelayConfig, dump_config, parse_config
from mailpipe.contracts.errors import PermanentError
from mailpipe.operator import models

from .docs import relay_config_doc as _doc


def test_a_valid_config_round_trips() -> None:
    cfg = parse_config(yaml.safe_dump(_doc(warmup={"timezone": "Europe/Paris"})))
    assert parse_config(dump_config(cfg)) == cfg


INVALID = {
    "not yaml": "pool: [",
    "not a mapping": "- 1\n- 2\n",
    "unknown key": yaml.safe_dump(_doc(extra=1)),
    "bad delay step": yaml.safe_dump(
        _doc(
            kafka={**_doc()["kafka"], "delay_topics": {"5 minutes": "p.delay.5"}},
        )
    ),
    "unknown time zone": yaml.safe_dump(_doc(warmup={"timezone": "Mars/Olympus_Mons"})),
    "malformed time zone": yaml.safe_dump(_doc(warmup={"timezone": "../etc/passwd"})),
    "decreasing warm-up": yaml.safe_dump(
        _doc(warmup={"schedule": [{"day": 1, "daily_limit": 9}, {"day": 2, "daily_limit": 5}]})
    ),
    "repeated warm-up day": yaml.safe_dump(
        _doc(warmup={"schedule": [{"day": 1, "daily_limit": 5}, {"day": 1, "daily_limit": 5}]})
    ),
    "unknown group in warm-up": yaml.safe_dump(
        _doc(warmup={"schedule": [{"day": 1, "daily_limit": 5, "group_limits": {"big": 1}}]})
    ),
    "duplicate egress": yaml.safe_dump(
        _doc(egress=[{"address": "127.0.0.2", "helo": "e.test"}] * 2)
    ),
    "egress not an IPv4 address": yaml.safe_dump(_doc(egress=[{"address": "x", "helo": "e.test"}])),
    "empty retry schedule": yaml.safe_dump(_doc(retry={"schedule_seconds": []})),
    "unknown TLS mode": yaml.safe_dump(_doc(tls={"mode": "sometimes"})),
    "unknown version": yaml.safe_dump(_doc(v=2)),
}


@pytest.mark.parametrize("text", INVALID.values(), ids=INVALID.keys())
def test_every_invalid_config_raises_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert isinstance(info.value, PermanentError) and isinstance(info.value, ValueError)


def test_spec_and_relay_config_share_their_policy_types() -> None:
    # The operator hands its parsed objects to the relay config: same classes, no copy.
    for name in ("EgressIP", "Throttle", "RetrySettings", "TLSSettings", "Route"):
        assert getattr(models, name) is getattr(config, name) is getattr(policy, name)
    assert issubclass(models.Warmup, policy.WarmupPolicy)
    assert issubclass(config.WarmupSettings, policy.WarmupPolicy)
    relay_fields = RelayConfig.model_fields
    assert relay_fields["throttle_default"].annotation is policy.Throttle
    assert issubclass(models.SendingPoolSpec.model_fields["tls"].annotation, policy.TLSSettings)
    assert issubclass(relay_fields["tls"].annotation, policy.TLSSettings)


def test_policy_types_read_both_spellings() -> None:
    # camelCase in a custom resource, snake_case in the relay config file.
    a = policy.Throttle.model_validate({"maxConnections": 3})
    b = policy.Throttle.model_validate({"max_connections": 3})
    assert a == b and a.model_dump(by_alias=True)["maxConnections"] == 3


def test_zero_retry_waits_and_negative_group_caps_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"retry\.schedule_seconds"):
        parse_config(yaml.safe_dump(_doc(retry={"schedule_seconds": [60, 0]})))
    schedule = [{"day": 1, "daily_limit": 5, "group_limits": {"big": -1}}]
    with pytest.raises(ConfigError, match="group_limits"):
        parse_config(
            yaml.safe_dump(_doc(domain_groups={"big": ["*"]}, warmup={"schedule": schedule}))
        )


def _warmup_caps(group_limits: dict[str, int]) -> str:
    schedule = [{"day": 1, "daily_limit": 50, "group_limits": group_limits}]
    return yaml.safe_dump(
        _doc(domain_groups={"big": ["*.big.test"]}, warmup={"schedule": schedule})
    )


def test_a_warmup_cap_names_a_group_or_a_site() -> None:
    """A group, an MX provider's site and a domain's own site are all capped by
    name; a name without a dot that no group defines is a typo, named in the
    error with the field it is in, and so is a site in capitals."""
    caps = {"big": 5, "google.com": 10, "partner.example": 2}
    assert parse_config(_warmup_caps(caps)).warmup.schedule[0].group_limits == caps
    with pytest.raises(ConfigError, match=r"warmup\.schedule\[0\]\.groupLimits\.gmail names no "):
        parse_config(_warmup_caps({"big": 5, "gmail": 3}))
    with pytest.raises(ConfigError, match=r"groupLimits\.Google\.com: write the site in lower"):
        parse_config(_warmup_caps({"Google.com": 3}))
