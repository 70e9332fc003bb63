"""Campaign edits after fan-out, and conditions kstatus can read (issue 12, deliverable 2).

Before: an edit after fan-out was silently ignored (generation 2,
observedGeneration 1, no Event). Now a frozen field is refused with a
condition and a Warning Event, `suspend` still applies, and every generation
is observed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from mailpipe.kafkakit import read_topic

from .conftest import OperatorProcess, get, kubectl, wait_for

pytestmark = pytest.mark.operator

STATUS_SECONDS = 60  # the campaign status timer ticks every 3 s; fan-out of two takes seconds


def _campaign(name: str, namespace: str, **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "mailpipe.io/v1alpha1",
            "kind": "Campaign",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "poolRef": "news",
                "from": {"address": "news@sender.test"},
                "subject": "Hello",
                "text": "Hi",
                "audience": {"inline": [{"address": "a@x.test"}, {"address": "b@y.test"}]},
                **spec,
            },
        }
    )


def _obj(env: dict[str, str], namespace: str, name: str = "edit") -> dict[str, Any]:
    return get(env, "camp", name, namespace) or {}


def _conditions(env: dict[str, str], namespace: str, name: str = "edit") -> dict[str, Any]:
    conditions = _obj(env, namespace, name).get("status", {}).get("conditions", [])
    return {c["type"]: c for c in conditions}


def _status_of(env: dict[str, str], namespace: str, type_: str, name: str = "edit") -> str:
    return str(_conditions(env, namespace, name).get(type_, {}).get("status", ""))


def _patch(env: dict[str, str], namespace: str, spec: dict[str, Any]) -> None:
    body = json.dumps({"spec": spec})
    out = kubectl(env, "patch", "camp", "edit", "-n", namespace, "--type=merge", "-p", body)
    assert out.returncode == 0, out.stderr


def test_an_edit_after_fanout_is_refused_with_a_condition_and_event_and_suspend_applies(
    ready_operator: OperatorProcess,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = ready_operator
    assert kubectl(cli_env, "apply", "-f", "-", stdin=_campaign("edit", namespace)).returncode == 0
    wait_for(
        lambda: _obj(cli_env, namespace).get("status", {}).get("fanout", {}).get("state") == "done",
        STATUS_SECONDS,
        "fan-out done",
        op,
    )
    wait_for(
        lambda: _status_of(cli_env, namespace, "Ready") == "True",
        STATUS_SECONDS,
        "Campaign Ready (kstatus: Current)",
        op,
    )
    assert _status_of(cli_env, namespace, "Reconciling") == "False"
    assert _status_of(cli_env, namespace, "Stalled") == "False"

    _patch(
        cli_env,
        namespace,
        {"subject": "Changed", "audience": {"inline": [{"address": "c@z.test"}]}},
    )
    wait_for(
        lambda: _status_of(cli_env, namespace, "SpecAccepted") == "False",
        STATUS_SECONDS,
        "SpecAccepted=False",
        op,
    )
    obj = _obj(cli_env, namespace)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2
    accepted = _conditions(cli_env, namespace)["SpecAccepted"]
    assert accepted["reason"] == "EditRefusedAfterFanout"
    assert "subject, audience" in accepted["message"], accepted
    stalled = _conditions(cli_env, namespace)["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", "EditRefusedAfterFanout")
    assert _status_of(cli_env, namespace, "Ready") == "False"
    events = kubectl(
        cli_env,
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=edit,type=Warning",
        "-o",
        "json",
    )
    assert "EditRefusedAfterFanout" in {e["reason"] for e in json.loads(events.stdout)["items"]}
    # nothing was produced for the refused edit
    subjects = [
        json.loads(v)["content"]["subject"]
        for _, v in read_topic(kafka_bootstrap, f"{topic_prefix}.outbound")
        if v
    ]
    assert subjects == ["Hello", "Hello"]

    # reverting the frozen fields and suspending: accepted and applied
    _patch(
        cli_env,
        namespace,
        {
            "subject": "Hello",
            "suspend": True,
            "audience": {"inline": [{"address": "a@x.test"}, {"address": "b@y.test"}]},
        },
    )
    wait_for(
        lambda: (
            _status_of(cli_env, namespace, "SpecAccepted") == "True"
            and _obj(cli_env, namespace)["status"].get("phase") == "Paused"
        ),
        STATUS_SECONDS,
        "SpecAccepted=True and Paused",
        op,
    )
    obj = _obj(cli_env, namespace)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 3
    assert "refusedEdit" not in obj["status"]
    assert _status_of(cli_env, namespace, "Stalled") == "False"


def test_a_missing_audience_configmap_is_named(
    ready_operator: OperatorProcess, cli_env: dict[str, str], namespace: str
) -> None:
    op = ready_operator
    manifest = _campaign("nocm", namespace, audience={"configMapRef": {"name": "nope"}})
    assert kubectl(cli_env, "apply", "-f", "-", stdin=manifest).returncode == 0
    wait_for(
        lambda: _status_of(cli_env, namespace, "Stalled", "nocm") == "True",
        STATUS_SECONDS,
        "Stalled",
        op,
    )
    stalled = _conditions(cli_env, namespace, "nocm")["Stalled"]
    assert "ConfigMap nope not found" in stalled["message"], stalled
    assert "has no key" not in stalled["message"]
