"""What comes back, end to end (issue 20, items 4 and 5), against the real API
server and Kafka: the one-click endpoint as its own process writes the
suppression a later campaign obeys and the event the campaign counts; a GET
changes nothing; every bad token is refused with its status; complaints that
cross the campaign's threshold pause it, with the reason in `kubectl describe`."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from mailpipe.contracts.feedback_token import (
    Purpose,
    TokenKeys,
    TokenPayload,
    keys_from_secret,
    sign,
)
from mailpipe.contracts.topics import Topics
from mailpipe.contracts.wire import Disposition, Event, decode_record, encode
from mailpipe.devstack.harness import Child, Children
from mailpipe.devstack.procs import free_port
from mailpipe.kafkakit import read_topic

from .conftest import OperatorProcess, get, kubectl, wait_for

pytestmark = [pytest.mark.operator, pytest.mark.feedback]

KEY_BYTES = b"s" * 32
KEYS = keys_from_secret({"ka": KEY_BYTES})
ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = "application/x-www-form-urlencoded"


def _campaign(namespace: str, name: str, addresses: list[str], **spec: Any) -> str:
    body = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "Campaign",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "poolRef": "news",
            "from": {"address": "news@sender.test"},
            "subject": "Hello",
            "text": "Hi",
            "audience": {"inline": [{"address": a} for a in addresses]},
            **spec,
        },
    }
    return json.dumps(body)


def _status(env: dict[str, str], name: str, namespace: str) -> dict[str, Any]:
    return dict((get(env, "camp", name, namespace) or {}).get("status", {}))


def _request(url: str, method: str, body: bytes | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", FORM)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # not listening yet
        return 0, ""


def _start(
    children: Children, tmp_path: Path, namespace: str, bootstrap: str, topic_prefix: str
) -> tuple[str, Child]:
    """The endpoint as its own process (`python -m mailpipe.inbound.unsubscribe`)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "ka").write_bytes(KEY_BYTES)
    port = free_port()
    config = tmp_path / "unsubscribe.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "namespace": namespace,
                "keys_dir": str(keys),
                "kafka": {"bootstrap_servers": bootstrap},
                "events_topics": {"news": f"{topic_prefix}.events"},
                "listen_address": "127.0.0.1",
                "port": port,
                "metrics_port": 0,
                "kafka_timeout_seconds": 5,
            }
        )
    )
    child = children.start(
        "unsubscribe",
        [sys.executable, "-m", "mailpipe.inbound.unsubscribe", "--config", str(config)],
    )
    base = f"http://127.0.0.1:{port}/u/"
    wait_for(lambda: _request(base + "x", "GET")[0] == 400, 60, "endpoint up", child)
    return base, child


@pytest.fixture
def endpoint(
    tmp_path: Path, namespace: str, kafka_bootstrap: str, topic_prefix: str
) -> Iterator[tuple[str, Child]]:
    with Children(tmp_path) as children:
        yield _start(children, tmp_path, namespace, kafka_bootstrap, topic_prefix)


def test_without_kafka_the_endpoint_serves_and_answers_503_never_200(
    tmp_path: Path, namespace: str, topic_prefix: str
) -> None:
    """Started while its Kafka is unreachable: it serves at once (the confirm page),
    and a one-click POST gets 503 with Retry-After, so the client tries again."""
    nowhere = f"127.0.0.1:{free_port()}"
    with Children(tmp_path) as children:
        base, server = _start(children, tmp_path, namespace, nowhere, topic_prefix)
        token = _token(namespace, "r1@x.test")
        assert _request(base + token, "GET")[0] == 200
        status, text = _request(base + token, "POST", ONE_CLICK)
        assert status == 503, text
        assert server.returncode is None


def _token(namespace: str, recipient: str, keys: TokenKeys = KEYS, **fields: Any) -> str:
    payload = TokenPayload(
        namespace=namespace,
        pool="news",
        recipient=recipient,
        message_id="first-uid-1",
        campaign="first",
        variant="a",
        issued_at=int(time.time()),
    )
    return sign(TokenPayload(**{**payload.__dict__, **fields}), Purpose.UNSUBSCRIBE, keys)


def test_one_click_suppresses_a_get_does_not_and_bad_tokens_are_refused(
    ready_operator: OperatorProcess,
    endpoint: tuple[str, Child],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op, (base, server) = ready_operator, endpoint
    audience = ["r0@x.test", "r1@x.test", "r2@x.test"]
    variants = [{"name": "a", "weight": 50}, {"name": "b", "weight": 50}]
    assert (
        kubectl(
            cli_env,
            "apply",
            "-f",
            "-",
            stdin=_campaign(namespace, "first", audience, variants=variants),
        ).returncode
        == 0
    )
    wait_for(
        lambda: _status(cli_env, "first", namespace).get("phase") == "Sending", 60, "first", op
    )

    # a GET (a link scanner) shows the confirm page and changes nothing
    status, page = _request(base + _token(namespace, "r2@x.test"), "GET")
    assert status == 200 and 'value="One-Click"' in page
    # each bad token refused with its status, on the POST too
    good = _token(namespace, "r0@x.test")
    head, body, mac = good.split(".")
    bad = {
        "forged": (_token(namespace, "r0@x.test", keys_from_secret({"ka": b"f" * 32})), 403),
        "tampered": (f"{head}.{body[:-1]}{'b' if body[-1] == 'a' else 'a'}.{mac}", 403),
        "expired": (_token(namespace, "r0@x.test", issued_at=int(time.time()) - 61 * 86400), 410),
        "foreign": (_token("someone-else", "r0@x.test"), 403),
    }
    for what, (token, expected) in bad.items():
        status, text = _request(base + token, "POST", ONE_CLICK)
        assert status == expected, (what, status, text)
    assert _request(base + good, "POST", b"unsubscribe=yes")[0] == 400

    # the one-click POST: 200 once Kafka has the suppression and the event
    status, text = _request(base + _token(namespace, "r1@x.test"), "POST", ONE_CLICK)
    assert status == 200, text
    space = Topics.for_pool(namespace, "news")
    suppressed = {k for k, v in read_topic(kafka_bootstrap, space.suppressions) if v}
    assert suppressed == {b"r1@x.test"}, "the GET and the refused POSTs wrote nothing"
    wait_for(
        lambda: _status(cli_env, "first", namespace).get("counts", {}).get("unsubscribed") == 1,
        60,
        "first counts the unsubscribe",
        op,
    )
    assert _status(cli_env, "first", namespace)["variants"]["a"]["unsubscribed"] == 1

    # a later campaign to the same addresses leaves r1 out
    assert (
        kubectl(
            cli_env, "apply", "-f", "-", stdin=_campaign(namespace, "later", audience)
        ).returncode
        == 0
    )
    wait_for(
        lambda: _status(cli_env, "later", namespace).get("fanout", {}).get("state") == "done",
        60,
        "later fanned out",
        op,
    )
    later = _status(cli_env, "later", namespace)
    assert (later["fanout"]["suppressedBeforeSend"], later["fanout"]["enqueued"]) == (1, 2)
    sent = [
        r.address
        for _, value in read_topic(kafka_bootstrap, f"{topic_prefix}.outbound")
        if value and (record := decode_record(value)).campaign == f"{namespace}/later"
        for r in record.recipients
    ]
    assert sorted(sent) == ["r0@x.test", "r2@x.test"]
    assert server.returncode is None


def test_complaints_over_the_threshold_pause_the_campaign_with_the_reason(
    ready_operator: OperatorProcess,
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    op = ready_operator
    audience = [f"r{i}@x.test" for i in range(10)]
    thresholds = {"pauseAtPercent": 20, "warnAtPercent": 10, "minDelivered": 5}
    assert (
        kubectl(
            cli_env,
            "apply",
            "-f",
            "-",
            stdin=_campaign(namespace, "spam", audience, complaints=thresholds),
        ).returncode
        == 0
    )
    wait_for(lambda: _status(cli_env, "spam", namespace).get("phase") == "Sending", 60, "spam", op)
    key = f"{namespace}/spam"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")

    def send(rcpt: str, disposition: Disposition) -> None:
        event = Event(
            message_id=f"m-{rcpt}",
            campaign=key,
            recipient=rcpt,
            domain="x.test",
            disposition=disposition,
            time=time.time(),
        )
        producer.send(f"{topic_prefix}.events", key=key.encode(), value=encode(event))

    for rcpt in audience:
        send(rcpt, Disposition.DELIVERED)
    send("r0@x.test", Disposition.COMPLAINED)  # 10%: a warning, no pause
    producer.flush()

    def complaint_condition() -> dict[str, Any]:
        conditions = _status(cli_env, "spam", namespace).get("conditions", [])
        return next((c for c in conditions if c["type"] == "ComplaintRateHigh"), {})

    wait_for(lambda: complaint_condition().get("reason") == "AboveWarning", 60, "warning", op)
    assert not (get(cli_env, "camp", "spam", namespace) or {})["spec"].get("suspend")
    send("r1@x.test", Disposition.COMPLAINED)  # 20%: paused
    producer.flush()
    producer.close()
    wait_for(lambda: _status(cli_env, "spam", namespace).get("phase") == "Paused", 60, "paused", op)
    assert (get(cli_env, "camp", "spam", namespace) or {})["spec"]["suspend"] is True
    cond = complaint_condition()
    assert (cond["status"], cond["reason"]) == ("True", "AbovePauseThreshold")
    assert "2 complaints of 10 delivered (20.00%)" in cond["message"]
    complaints = _status(cli_env, "spam", namespace)["complaints"]
    assert (complaints["rate"], complaints["paused"]) == ("20.00%", True)
    # the relays are told, as for a pause by hand
    control = Topics.for_pool(namespace, "news").control
    wait_for(
        lambda: any(
            k == key.encode() and v and json.loads(v)["state"] == "paused"
            for k, v in read_topic(kafka_bootstrap, control)
        ),
        60,
        "paused published",
        op,
    )
    described = kubectl(cli_env, "describe", "camp", "spam", "-n", namespace).stdout
    assert "ComplaintRateExceeded" in described
    assert "reached the pause threshold 20%" in described
