"""Delay steps are validated wherever they enter: CRD schema, spec model, relay config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mailpipe.contracts.config import ConfigError, parse_config
from mailpipe.contracts.delays import DELAY_STEP_PATTERN, DelayStep
from mailpipe.operator.models import SendingPoolSpec

from .docs import relay_config_doc

CRDS = Path(__file__).resolve().parents[3] / "crds"

GOOD = [("30s", 30), ("1m", 60), ("10m", 600), ("1h", 3600), ("6h", 21600), ("1d", 86400)]
BAD = ["5 minutes", "1w", "0s", "01m", "m", "1", "", " 1m", "1m ", "1.5h", "\u0661m"]


@pytest.mark.parametrize(("text", "seconds"), GOOD, ids=[g[0] for g in GOOD])
def test_good_steps_parse_to_seconds(text: str, seconds: int) -> None:
    step = DelayStep(text)
    assert step == text and step.seconds == seconds


@pytest.mark.parametrize("text", BAD, ids=repr)
def test_bad_steps_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not like 30s, 1m, 1h or 1d"):
        DelayStep(text)


def _relay_config(delay_topics: dict[str, str]) -> str:
    kafka = {**relay_config_doc()["kafka"], "delay_topics": delay_topics}
    return yaml.safe_dump(relay_config_doc(kafka=kafka))


@pytest.mark.parametrize("text", BAD, ids=repr)
def test_relay_config_refuses_a_bad_step_with_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.delay_topics"):
        parse_config(_relay_config({"1m": "p.delay.1m", text: "p.delay.x"}))


def test_relay_config_keys_are_typed_steps() -> None:
    config = parse_config(_relay_config({"1m": "p.delay.1m", "1h": "p.delay.1h"}))
    assert {s.seconds for s in config.kafka.delay_topics} == {60, 3600}


@pytest.mark.parametrize("text", BAD, ids=repr)
def test_sending_pool_spec_refuses_a_bad_step(text: str) -> None:
    with pytest.raises(ValidationError, match="delaySteps"):
        SendingPoolSpec.model_validate(
            {
                "kafka": {"bootstrapServers": "k:9092", "delaySteps": ["1m", text]},
                "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
            }
        )


def test_the_crd_publishes_the_same_pattern() -> None:
    crd = yaml.safe_load((CRDS / "sendingpools.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    items = spec["properties"]["kafka"]["properties"]["delaySteps"]["items"]
    assert items["pattern"] == DELAY_STEP_PATTERN
    # The apiserver applies the pattern as written: it agrees with DelayStep on every case.
    pattern = re.compile(items["pattern"], re.ASCII)
    assert all(pattern.match(text) for text, _ in GOOD)
    assert not any(pattern.match(text) for text in BAD)
