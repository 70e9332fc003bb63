"""What is wrong with a SendingPool (found before anything is rolled out), which Campaign
edits apply after fan-out, and the conditions both kinds derive from it: pure, table-tested."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError

from mailpipe.operator.handlers.status import (
    Relays,
    campaign_conditions,
    find,
    merge_conditions,
    pool_conditions,
)
from mailpipe.operator.pool import drifted
from mailpipe.operator.validation import (
    Problem,
    ca_config_map,
    check_spec,
    config_map_names,
    config_map_problems,
    edit_refused_message,
    frozen_digests,
    kafka_problem,
    reference_problems,
    refused_edits,
    secret_names,
    secret_refs,
)

GOOD: dict[str, Any] = {
    "kafka": {"bootstrapServers": "k:9092"},
    "egressIPs": [{"address": "127.0.0.2", "helo": "a.sender.test"}],
}


def _with(path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(GOOD)
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


SPEC_ERRORS = [
    (
        _with("warmup.timeZone", "Europe/Berln"),
        "UnknownTimeZone",
        "spec.warmup.timeZone: unknown time zone 'Europe/Berln'",
    ),
    (
        _with("kafka.delaySteps", ["5 minutes"]),
        "InvalidDelayStep",
        "spec.kafka.delaySteps[0]: delay step '5 minutes' is not like 30s, 1m, 1h or 1d",
    ),
    (
        _with("warmup.schedule", [{"day": 1, "dailyLimit": 5, "groupLimits": {"gmail": 1}}]),
        "UnknownDomainGroup",
        "spec: warmup.schedule[0].groupLimits.gmail names no domain group defined in "
        "domainGroups (unknown group) and is not a site: define the group, or write a site "
        "such as google.com",
    ),
    (
        _with("retry", {"maxAgeSeconds": 3600}),  # the default schedule adds up to 25,860 s
        "RetryLongerThanMaxAge",
        "spec.retry: scheduleSeconds add up to 25860s, longer than maxAgeSeconds 3600s: "
        "the last retries would never run",
    ),
    (_with("replicas", -1), "InvalidSpec", "spec.replicas: Input should be greater than or"),
]


@pytest.mark.parametrize(
    ("raw", "reason", "message"),
    SPEC_ERRORS,
    ids=["time-zone", "delay-step", "undefined-group", "retry-vs-max-age", "other"],
)
def test_each_semantic_error_has_its_reason_and_a_one_line_message(
    raw: dict[str, Any], reason: str, message: str
) -> None:
    _, problems = check_spec(raw)
    assert [p.reason for p in problems] == [reason]
    assert problems[0].message.startswith(message), problems[0].message
    assert "\n" not in problems[0].message


def test_a_good_spec_has_no_problem_and_its_secrets_are_listed() -> None:
    raw = _with("dkim", {"domain": "s.test", "selector": "s1", "secretRef": {"name": "dk"}})
    spec, problems = check_spec(raw)
    assert spec is not None and problems == []
    refs = secret_refs(spec)
    assert [(r.name, r.key, r.field) for r in refs] == [
        ("dk", "private.pem", "spec.dkim.secretRef")
    ]
    assert secret_names(raw) == ["dk"]
    assert secret_names({"dkim": "garbage"}) == []  # watches read specs that do not parse
    assert reference_problems(refs, {"dk": {"private.pem": "eA=="}}) == []
    assert reference_problems(refs, {"dk": None}) == [
        Problem("SecretNotFound", "Secret dk not found (spec.dkim.secretRef)")
    ]
    assert reference_problems(refs, {"dk": {"other": "eA=="}}) == [
        Problem("SecretKeyNotFound", "Secret dk has no key 'private.pem' (spec.dkim.secretRef.key)")
    ]


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (
            KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9092"),
            "KafkaUnavailable: cannot reach bootstrap 127.0.0.1:9092 (KafkaTimeoutError)",
        ),
        (
            TopicAuthorizationFailedError("x" * 900 + "\nmore"),
            "KafkaUnavailable: cannot create topics on 127.0.0.1:9092 "
            "(TopicAuthorizationFailedError: [Error 29] TopicAuthorizationFailedError: xxx",
        ),
        (
            KafkaTimeoutError("request timed out"),
            "KafkaUnavailable: cannot create topics on 127.0.0.1:9092 (KafkaTimeoutError: ",
        ),
    ],
    ids=["no-brokers", "long-repr", "timeout"],
)
def test_kafka_errors_are_one_short_line(exc: Exception, message: str) -> None:
    problem = kafka_problem(exc, "127.0.0.1:9092")
    assert problem.reason == "KafkaUnavailable"
    assert problem.message.startswith(message), problem.message
    assert "\n" not in problem.message and len(problem.message) <= 300


def _conditions(
    problems: list[Problem], kafka: Problem | None, relays: Relays | None
) -> dict[str, tuple[str, str, str]]:
    return {
        c["type"]: (c["status"], c["reason"], c["message"])
        for c in pool_conditions(7, problems, kafka, relays)
    }


def _relays(desired: int, available: int, updated: int | None = None) -> Relays:
    return Relays(desired, available, desired if updated is None else updated, observed=True)


@pytest.mark.parametrize(
    ("problems", "kafka", "relays", "ready", "reconciling", "stalled"),
    [
        ([], None, _relays(2, 2), ("True", "RelaysAvailable"), "False", "False"),
        ([], None, _relays(2, 1), ("False", "RelaysUnavailable"), "True", "False"),
        ([], None, _relays(2, 0), ("False", "RelaysUnavailable"), "True", "False"),
        ([], None, _relays(2, 2, updated=1), ("True", "RelaysAvailable"), "True", "False"),
        ([], None, _relays(0, 0), ("True", "RelaysAvailable"), "False", "False"),
        (
            [],
            Problem("KafkaUnavailable", "KafkaUnavailable: x"),
            _relays(2, 2),
            ("False", "KafkaUnavailable"),
            "True",
            "False",
        ),
        (
            [Problem("SecretNotFound", "Secret d not found")],
            None,
            None,
            ("False", "SecretNotFound"),
            "False",
            "True",
        ),
    ],
    ids=["available", "partial", "crashed", "rolling", "zero", "kafka", "secret"],
)
def test_pool_conditions_are_kstatus_readable(
    problems: list[Problem],
    kafka: Problem | None,
    relays: Relays | None,
    ready: tuple[str, str],
    reconciling: str,
    stalled: str,
) -> None:
    got = _conditions(problems, kafka, relays)
    assert got["Ready"][:2] == ready
    assert got["Reconciling"][0] == reconciling
    assert got["Stalled"][0] == stalled
    assert all(c["observedGeneration"] == 7 for c in pool_conditions(7, problems, kafka, relays))


def test_relays_from_a_deployment_status() -> None:
    dep = {
        "metadata": {"generation": 3},
        "status": {"observedGeneration": 3, "availableReplicas": 1, "updatedReplicas": 2},
    }
    assert Relays.of(dep, 2) == Relays(2, 1, 2, observed=True)
    assert Relays.of(None, 2) == Relays(2, 0, 0, observed=False)
    assert Relays.of({"metadata": {"generation": 4}, "status": {}}, 1).rolled_out is False
    assert Relays.of(dep, 2).summary() == "1/2 relays available"


def test_merge_keeps_transition_times_and_conditions_of_other_writers() -> None:
    old = [
        {"type": "Ready", "status": "True", "lastTransitionTime": "t0"},
        {"type": "WarmupPaused", "status": "True", "lastTransitionTime": "t1"},
    ]
    new = [{"type": "Ready", "status": "True", "lastTransitionTime": "t2"}]
    merged = merge_conditions(old, new)
    assert find(merged, "Ready") == {"type": "Ready", "status": "True", "lastTransitionTime": "t0"}
    assert find(merged, "WarmupPaused") == old[1]


@pytest.mark.parametrize(
    ("live", "paths"),
    [
        ({"replicas": 2, "template": {"spec": {"image": "a", "extra": 1}}}, []),
        ({"replicas": 5, "template": {"spec": {"image": "a"}}}, [".replicas"]),
        ({"replicas": 2, "template": {"spec": {"image": "b"}}}, [".template.spec.image"]),
        ({"replicas": 2}, [".template"]),
    ],
    ids=["defaults-added", "scaled", "edited", "removed"],
)
def test_drift_is_what_differs_from_the_rendered_fields(
    live: dict[str, Any], paths: list[str]
) -> None:
    desired = {"replicas": 2, "template": {"spec": {"image": "a", "resources": {}}}}
    assert drifted(desired, live) == paths


RENDERED: dict[str, Any] = {
    "template": {"spec": {"hostNetwork": False, "cpu": "0.5", "containers": [{"name": "a"}]}}
}
SERVER_VIEW: dict[str, Any] = {  # the API server omits false and writes quantities canonically
    "template": {"spec": {"cpu": "500m", "containers": [{"name": "a", "restartPolicy": "x"}]}}
}


@pytest.mark.parametrize(
    ("live", "paths"),
    [
        (SERVER_VIEW, []),
        (
            {"template": {"spec": {**SERVER_VIEW["template"]["spec"], "hostNetwork": True}}},
            [".template.spec.hostNetwork"],
        ),
        (
            {"template": {"spec": {**SERVER_VIEW["template"]["spec"], "cpu": "2"}}},
            [".template.spec.cpu"],
        ),
        ({"template": {"spec": {"cpu": "500m", "containers": []}}}, [".template.spec.containers"]),
    ],
    ids=["as-stored", "false-set-true", "quantity-changed", "container-removed"],
)
def test_drift_is_judged_against_the_servers_view_of_the_rendering(
    live: dict[str, Any], paths: list[str]
) -> None:
    assert drifted(RENDERED, live, "", SERVER_VIEW) == paths
    assert drifted(RENDERED, SERVER_VIEW) != []  # compared as rendered, it always looked changed


CAMPAIGN: dict[str, Any] = {
    "poolRef": "news",
    "from": {"address": "news@sender.test"},
    "subject": "Hello",
    "text": "Hi",
    "audience": {"inline": [{"address": "a@x.test"}]},
}


@pytest.mark.parametrize(
    ("edit", "refused"),
    [
        ({"suspend": True}, []),
        ({"subject": "Changed"}, ["subject"]),
        ({"poolRef": "other", "text": "Bye"}, ["poolRef", "text"]),
        ({"audience": {"inline": [{"address": "b@x.test"}]}}, ["audience"]),
        ({"sendWindows": [{"days": ["Mon"], "start": "09:00", "end": "17:00"}]}, ["sendWindows"]),
        ({"from": {"address": "other@sender.test"}}, ["from"]),
    ],
    ids=["suspend", "subject", "pool-and-text", "audience", "window", "sender"],
)
def test_after_fanout_only_suspend_applies(edit: dict[str, Any], refused: list[str]) -> None:
    accepted = frozen_digests(CAMPAIGN)
    assert refused_edits(accepted, {**CAMPAIGN, **edit}) == refused
    assert refused_edits(None, {**CAMPAIGN, **edit}) == []  # nothing accepted yet: all applies
    if refused:
        message = edit_refused_message(refused)
        assert message.startswith(f"fan-out started: edits to {', '.join(refused)} are refused")
        assert "\n" not in message


@pytest.mark.parametrize(
    ("phase", "stalled", "expected"),
    [
        ("Pending", None, ("False", "True", "False")),
        ("Sending", None, ("True", "False", "False")),
        ("Completed", None, ("True", "False", "False")),
        ("Paused", None, ("True", "False", "False")),
        ("Failed", ("InvalidAudience", "line 3"), ("False", "False", "True")),
        ("Sending", ("EditRefusedAfterFanout", "x"), ("False", "False", "True")),
    ],
    ids=["pending", "sending", "completed", "paused", "failed", "edit-refused"],
)
def test_campaign_conditions_are_kstatus_readable(
    phase: str, stalled: tuple[str, str] | None, expected: tuple[str, str, str]
) -> None:
    got = {c["type"]: c for c in campaign_conditions(4, phase, "why", stalled)}
    assert (got["Ready"]["status"], got["Reconciling"]["status"], got["Stalled"]["status"]) == (
        expected
    )
    assert {c["observedGeneration"] for c in got.values()} == {4}


def test_a_ca_bundle_secret_is_checked_and_watched() -> None:
    """Issue 22 finding 2: the pool's CA bundle Secret must exist with its key, and
    rotating it rolls the relays like the other Secrets they mount."""
    raw = _with("tls", {"mode": "verify", "caBundle": {"secret": "private-ca"}})
    spec, problems = check_spec(raw)
    assert spec is not None and problems == []
    refs = secret_refs(spec)
    assert [(r.name, r.key, r.field) for r in refs] == [
        ("private-ca", "ca.crt", "spec.tls.caBundle.secret")
    ]
    assert secret_names(raw) == ["private-ca"]
    assert secret_names({"tls": {"caBundle": "garbage"}}) == []
    assert reference_problems(refs, {"private-ca": {}}) == [
        Problem(
            "SecretKeyNotFound",
            "Secret private-ca has no key 'ca.crt' (spec.tls.caBundle.secret)",
        )
    ]


def test_a_ca_bundle_configmap_is_checked_and_watched() -> None:
    raw = _with("tls", {"mode": "verify", "caBundle": {"configMap": "ca", "key": "b.pem"}})
    spec, problems = check_spec(raw)
    assert spec is not None and problems == []
    assert ca_config_map(spec) == ("ca", "b.pem")
    assert config_map_names(raw) == ["ca"] and secret_names(raw) == []
    assert config_map_names({"tls": "garbage"}) == []
    assert config_map_problems("ca", "b.pem", {"b.pem": "PEM"}) == []
    assert config_map_problems("ca", "b.pem", None) == [
        Problem("ConfigMapNotFound", "ConfigMap ca not found (spec.tls.caBundle.configMap)")
    ]
    assert config_map_problems("ca", "b.pem", {}) == [
        Problem(
            "ConfigMapKeyNotFound", "ConfigMap ca has no key 'b.pem' (spec.tls.caBundle.configMap)"
        )
    ]
