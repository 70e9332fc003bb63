"""A SendingPool's bounce rules reach its relays (issue 20, item 3): the spec's
`bounces` goes into the relay config, where its rules come before the packaged
ones; a pool without any renders the config (and its hash) as before."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mailpipe.contracts.bounces import BounceClass, classifier_for
from mailpipe.contracts.config import parse_config
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import PoolRef, build_children

REF = PoolRef("news", "mail", "uid-1")
RULES = {
    "rules": [
        {
            "bounceClass": "invalid_recipient",
            "codes": ["550"],
            "text": "account retired",
            "description": "our partner's wording for a deleted account",
        }
    ],
    "suppression": {"policy_related": {"after": 2, "withinDays": 3}},
}


def spec(**extra: Any) -> SendingPoolSpec:
    base: dict[str, Any] = {
        "kafka": {"bootstrapServers": "kafka:9092"},
        "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
    }
    return SendingPoolSpec.model_validate(base | extra)


def test_pool_rules_reach_the_relay_config_and_come_first() -> None:
    text, _ = build_children(REF, spec(bounces=RULES))
    config = parse_config(text)
    classifier = classifier_for(config.bounces)
    found = classifier.classify(550, "5.7.1", "5.7.1 account retired", "rcpt")
    assert found.bounce_class is BounceClass.INVALID_RECIPIENT
    policy = classifier.suppression(BounceClass.POLICY_RELATED)
    assert policy is not None and (policy.after, policy.within_days) == (2, 3)


def test_a_pool_without_rules_renders_the_config_as_before() -> None:
    text, _ = build_children(REF, spec())
    assert "bounces" not in text


def test_an_unknown_key_in_a_pool_rule_is_refused_naming_it() -> None:
    bad = {"rules": [{"bounceClass": "other", "codes": ["550"], "txt": "x"}]}
    with pytest.raises(ValidationError, match=r"bounces\.rules\.0\.txt"):
        spec(bounces=bad)
