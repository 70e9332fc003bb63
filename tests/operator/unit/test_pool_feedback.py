"""A SendingPool's feedback settings reach its relays (issue 20, item 1): the
bounce domain and the mounted key Secret go into the relay config, the Secret
is mounted read-only, and a missing or unusable key Secret is a condition of
its own that says how to make one."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from pydantic import ValidationError

from mailpipe.contracts.config import parse_config
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import FEEDBACK_KEYS_DIR, PoolRef, build_children
from mailpipe.operator.validation import reference_problems, secret_names, secret_refs

REF = PoolRef("news", "mail", "uid-1")
FEEDBACK = {"bounceDomain": "bounce.example.com", "keySecretRef": {"name": "fb-keys"}}


def spec(**extra: Any) -> SendingPoolSpec:
    base: dict[str, Any] = {
        "kafka": {"bootstrapServers": "kafka:9092"},
        "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
    }
    return SendingPoolSpec.model_validate(base | extra)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_feedback_settings_reach_the_relay_config_and_the_secret_is_mounted() -> None:
    text, children = build_children(REF, spec(feedback=FEEDBACK))
    feedback = parse_config(text).feedback
    assert feedback is not None
    assert (feedback.bounce_domain, feedback.keys_path) == ("bounce.example.com", FEEDBACK_KEYS_DIR)
    deployment = next(c for c in children if c["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "feedback-keys", "secret": {"secretName": "fb-keys"}} in pod["volumes"]
    (relay,) = pod["containers"]
    assert {"name": "feedback-keys", "mountPath": FEEDBACK_KEYS_DIR, "readOnly": True} in relay[
        "volumeMounts"
    ]


def test_a_pool_without_feedback_renders_no_return_path() -> None:
    text, _ = build_children(REF, spec())
    assert parse_config(text).feedback is None
    assert "feedback" not in text


@pytest.mark.parametrize("domain", ["Bounce.Example.com", "bounce", "-x.example.com", "a b.com"])
def test_a_bounce_domain_that_is_not_a_domain_is_refused(domain: str) -> None:
    with pytest.raises(ValidationError, match=r"bounceDomain|bounce_domain"):
        spec(feedback={**FEEDBACK, "bounceDomain": domain})


def test_a_missing_or_unusable_key_secret_is_a_condition_of_its_own() -> None:
    s = spec(feedback=FEEDBACK)
    refs = secret_refs(s)
    assert [(r.name, r.field) for r in refs] == [("fb-keys", "spec.feedback.keySecretRef")]
    assert secret_names({"feedback": FEEDBACK}) == ["fb-keys"]  # watched: a new key rolls relays
    assert reference_problems(refs, {"fb-keys": {"ka": b64(b"k" * 32)}}) == []
    (missing,) = reference_problems(refs, {"fb-keys": None})
    assert missing.reason == "FeedbackKeySecretNotFound"
    assert "kubectl create secret generic fb-keys" in missing.message
    (short,) = reference_problems(refs, {"fb-keys": {"ka": b64(b"short")}})
    assert short.reason == "FeedbackKeyInvalid" and "not so: ka" in short.message
    (badname,) = reference_problems(refs, {"fb-keys": {"key-1": b64(b"k" * 40)}})
    assert badname.reason == "FeedbackKeyInvalid"
    (empty,) = reference_problems(refs, {"fb-keys": {}})
    assert empty.reason == "FeedbackKeyInvalid"
