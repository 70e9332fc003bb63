"""A pool's EndpointsReady and status.endpoints, decided from its endpoint Deployments."""

from __future__ import annotations

from typing import Any

import pytest

from mailpipe.operator.endpoint_status import (
    Endpoint,
    decide,
    endpoint_deployments,
    lost,
    status_patch,
)
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import PoolRef, build_children

REF = PoolRef("news", "mail", "uid-1")
UP, DOWN = Endpoint(1, 1), Endpoint(1, 0)


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        pytest.param({}, (True, "NoEndpoints", "the spec asks for no endpoint"), id="none"),
        pytest.param(
            {"unsubscribe": UP, "feedback": UP},
            (True, "EndpointsAvailable", "feedback 1/1, unsubscribe 1/1 available"),
            id="all-up",
        ),
        pytest.param(
            {"feedback": UP, "submission": DOWN, "unsubscribe": UP},
            (
                False,
                "SubmissionUnavailable",
                "not available: submission 0/1; available: feedback 1/1, unsubscribe 1/1",
            ),
            id="one-down-named-in-reason",
        ),
        pytest.param(
            {"feedback": Endpoint(2, 1), "unsubscribe": DOWN},
            (False, "EndpointsUnavailable", "not available: feedback 1/2, unsubscribe 0/1"),
            id="several-down",
        ),
        pytest.param(
            {"feedback": Endpoint(1, 2)},  # a rollout's surge: more than asked is available
            (True, "EndpointsAvailable", "feedback 2/1 available"),
            id="surge",
        ),
    ],
)
def test_the_condition_names_the_endpoints_not_available(
    endpoints: dict[str, Endpoint], expected: tuple[bool, str, str]
) -> None:
    assert decide(endpoints) == expected


@pytest.mark.parametrize(
    ("live", "expected"),
    [
        pytest.param(None, Endpoint(1, 0), id="gone"),
        pytest.param({"spec": {"replicas": 1}}, Endpoint(1, 0), id="no-status-yet"),
        pytest.param({"status": {"availableReplicas": 1}}, Endpoint(1, 1), id="available"),
        pytest.param(
            {"status": {"replicas": 1, "unavailableReplicas": 1}}, Endpoint(1, 0), id="crashing"
        ),
    ],
)
def test_an_endpoint_is_read_from_its_deployments_status(
    live: dict[str, Any] | None, expected: Endpoint
) -> None:
    assert Endpoint.of(1, live) == expected


def test_the_rendered_endpoint_deployments_are_found_by_component_not_the_relays() -> None:
    spec = SendingPoolSpec.model_validate(
        {
            "kafka": {"bootstrapServers": "kafka:9092"},
            "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
            "feedback": {"bounceDomain": "bounces.example.com", "keySecretRef": {"name": "k"}},
            "unsubscribe": {"baseUrl": "https://unsub.example.com/u/", "keySecret": "k"},
        }
    )
    _, children = build_children(REF, spec)
    found = endpoint_deployments(children)
    assert {n: d["metadata"]["name"] for n, d in found.items()} == {
        "feedback": "mailpipe-feedback-news",
        "unsubscribe": "mailpipe-unsubscribe-news",
    }
    bare = SendingPoolSpec.model_validate({**spec.model_dump(by_alias=True), "feedback": None})
    assert set(endpoint_deployments(build_children(REF, bare)[1])) == {"unsubscribe"}


def test_status_endpoints_is_a_merge_patch_that_drops_removed_endpoints() -> None:
    old = {"feedback": {"desired": 1, "available": 1}, "submission": {"desired": 1, "available": 0}}
    assert status_patch(old, {"feedback": UP}) == {
        "feedback": {"desired": 1, "available": 1},
        "submission": None,  # spec.submission removed: gone from the status too
    }
    # nothing changed: equal to what is there, so nothing is written
    same = {"feedback": UP, "submission": DOWN}
    assert status_patch(old, same) == old
    assert status_patch(None, {}) == {}


@pytest.mark.parametrize(
    ("old", "now", "expected"),
    [
        pytest.param(
            {"submission": {"desired": 1, "available": 1}},
            {"submission": DOWN},
            ["submission"],
            id="was-available",
        ),
        pytest.param(
            {"submission": {"desired": 1, "available": 0}},
            {"submission": DOWN},
            [],
            id="never-came-up",
        ),
        pytest.param(None, {"submission": DOWN}, [], id="first-look"),
        pytest.param({"feedback": {"desired": 1, "available": 1}}, {}, [], id="removed-from-spec"),
        pytest.param(
            {"feedback": {"desired": 1, "available": 1}, "unsubscribe": {"desired": 1}},
            {"feedback": DOWN, "unsubscribe": DOWN},
            ["feedback"],
            id="only-the-lost-one",
        ),
    ],
)
def test_only_an_endpoint_that_was_available_is_lost(
    old: dict[str, Any] | None, now: dict[str, Endpoint], expected: list[str]
) -> None:
    assert lost(old, now) == expected
