"""One-click unsubscribe endpoint: tokens, bodies, Kafka acknowledgement, floods.

Served over real HTTP on loopback (aiohttp's test server); the producer is an
in-memory sender (what reaches Kafka is the integration test's business)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from mailpipe.contracts.feedback_token import (
    Purpose,
    TokenKeys,
    TokenPayload,
    keys_from_directory,
    sign,
)
from mailpipe.contracts.kafka_security import KafkaConnection
from mailpipe.contracts.wire import (
    Disposition,
    SuppressionReason,
    decode_event,
    decode_suppression,
)
from mailpipe.inbound.unsubscribe import (
    EndpointSettings,
    Metrics,
    UnsubscribeEndpoint,
    judge_form,
)

NOW = 1_800_000_000.0
KEYS = TokenKeys({"ka": b"k" * 32}, "ka")
OTHER_KEYS = TokenKeys({"ka": b"x" * 32}, "ka")
PAYLOAD = TokenPayload(
    namespace="mail",
    pool="marketing",
    recipient="Ann@Example.com",
    message_id="uid-7",
    campaign="spring",
    variant="b",
    issued_at=int(NOW) - 60,
)
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


class Sent:
    """In-memory sender: records what was sent; `fail` makes it raise, `hold` wait."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes | None]] = []
        self.fail: Exception | None = None
        self.hold: asyncio.Event | None = None
        self.held = 0
        self.two_held = asyncio.Event()

    async def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        if self.hold is not None:
            self.held += 1
            if self.held == 2:
                self.two_held.set()
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        self.records.append((topic, key, value))


def settings(**overrides: Any) -> EndpointSettings:
    return EndpointSettings(
        namespace="mail",
        keys_dir="/nonexistent",
        kafka=KafkaConnection(bootstrap_servers="127.0.0.1:9"),
        **overrides,
    )


@pytest.fixture
async def served() -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient[Any, Any]] = []

    async def make(**overrides: Any) -> tuple[TestClient[Any, Any], Sent, CollectorRegistry]:
        sent, registry = Sent(), CollectorRegistry()
        endpoint = UnsubscribeEndpoint(
            settings(**overrides), KEYS, sent, Metrics.create(registry), clock=lambda: NOW
        )
        client: TestClient[Any, Any] = TestClient(TestServer(endpoint.app()))
        await client.start_server()
        clients.append(client)
        return client, sent, registry

    yield make
    for c in clients:
        await c.close()


def url(
    payload: TokenPayload = PAYLOAD, keys: TokenKeys = KEYS, purpose: Purpose = Purpose.UNSUBSCRIBE
) -> str:
    return "/u/" + sign(payload, purpose, keys)


async def test_one_click_post_writes_the_suppression_then_the_event(served: Any) -> None:
    client, sent, registry = await served()
    resp = await client.post(url(), data=ONE_CLICK)  # application/x-www-form-urlencoded
    assert resp.status == 200, await resp.text()
    assert "Set-Cookie" not in resp.headers and "Location" not in resp.headers
    (s_topic, s_key, s_value), (e_topic, _, e_value) = sent.records
    assert s_topic == "mailpipe.mail.suppressions"
    assert s_key == b"ann@example.com"
    assert s_value is not None and e_value is not None
    suppression = decode_suppression(s_value)
    assert suppression.reason is SuppressionReason.UNSUBSCRIBE and suppression.list is None
    assert e_topic == "mailpipe.mail.marketing.events"
    event = decode_event(e_value)
    assert event.disposition is Disposition.UNSUBSCRIBED
    assert (event.campaign, event.variant, event.message_id) == ("mail/spring", "b", "uid-7")
    assert (
        registry.get_sample_value(
            "mailpipe_unsubscribe_requests_total", {"method": "POST", "outcome": "unsubscribed"}
        )
        == 1
    )


async def test_multipart_form_data_is_accepted_as_rfc8058_recommends(served: Any) -> None:
    client, sent, _ = await served()
    form = aiohttp.FormData()
    form.add_field("List-Unsubscribe", "One-Click")
    resp = await client.post(url(), data=form)
    assert resp.status == 200 and len(sent.records) == 2


async def test_a_list_token_suppresses_that_list_only(served: Any) -> None:
    client, sent, _ = await served()
    listed = TokenPayload(**{**PAYLOAD.__dict__, "mailing_list": "newsletter"})
    assert (await client.post(url(listed), data=ONE_CLICK)).status == 200
    _, key, value = sent.records[0]
    assert key == b"ann@example.com list=newsletter"
    assert value is not None and decode_suppression(value).list == "newsletter"


async def test_get_shows_a_confirm_form_and_never_unsubscribes(served: Any) -> None:
    client, sent, _ = await served()
    resp = await client.get(url())
    page = await resp.text()
    assert resp.status == 200
    assert 'method="post"' in page and 'name="List-Unsubscribe" value="One-Click"' in page
    assert sent.records == []
    assert (await client.head(url())).status == 200 and sent.records == []


@pytest.mark.parametrize(
    "body",
    [
        {"List-Unsubscribe": "one-click"},
        {"List-Unsubscribe": "One-Click", "extra": "1"},
        {"unsubscribe": "yes"},
        "",
        "List-Unsubscribe=One-Click&List-Unsubscribe=One-Click",
    ],
    ids=["wrong-case", "extra-field", "other-field", "empty", "twice"],
)
async def test_any_other_body_is_refused_with_400(served: Any, body: Any) -> None:
    client, sent, _ = await served()
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if isinstance(body, str) else {}
    resp = await client.post(url(), data=body, headers=headers)
    assert resp.status == 400 and "List-Unsubscribe=One-Click" in await resp.text()
    assert sent.records == []


async def test_an_oversized_body_is_refused_before_it_is_read(served: Any) -> None:
    client, sent, _ = await served()
    resp = await client.post(url(), data={"List-Unsubscribe": "One-Click" + "x" * 10_000})
    assert resp.status == 413 and sent.records == []


def _tampered() -> str:
    token = sign(PAYLOAD, Purpose.UNSUBSCRIBE, KEYS)
    head, body, mac = token.split(".")
    flipped = body[:-1] + ("a" if body[-1] != "a" else "b")
    return f"/u/{head}.{flipped}.{mac}"


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        (lambda: url(keys=OTHER_KEYS), 403, "forged"),
        (_tampered, 403, "forged"),
        (lambda: url(TokenPayload(**{**PAYLOAD.__dict__, "issued_at": 1})), 410, "expired"),
        (lambda: url(TokenPayload(**{**PAYLOAD.__dict__, "namespace": "other"})), 403, "other"),
        (lambda: url(purpose=Purpose.BOUNCE), 400, "purpose"),
        (lambda: "/u/not-a-token", 400, "not a mailpipe token"),
    ],
    ids=["forged", "tampered", "expired", "foreign-namespace", "bounce-token", "malformed"],
)
async def test_a_bad_token_is_refused_with_its_status_on_post_and_get(
    served: Any, path: Callable[[], str], status: int, words: str
) -> None:
    client, sent, _ = await served()
    for method in ("POST", "GET"):
        resp = await client.request(method, path(), data=ONE_CLICK if method == "POST" else None)
        assert resp.status == status
        assert words in await resp.text()
    assert sent.records == []


async def test_kafka_that_cannot_take_it_is_a_503_never_a_200(served: Any) -> None:
    client, sent, _ = await served()
    sent.fail = RuntimeError("broker down")
    resp = await client.post(url(), data=ONE_CLICK)
    assert resp.status == 503 and resp.headers["Retry-After"]


async def test_kafka_that_does_not_answer_in_time_is_a_503(served: Any) -> None:
    client, sent, _ = await served(kafka_timeout_seconds=0.05)
    sent.hold = asyncio.Event()  # never set: the acknowledgement never comes
    assert (await client.post(url(), data=ONE_CLICK)).status == 503


async def test_a_flood_beyond_the_cap_is_answered_503_at_once_not_queued(served: Any) -> None:
    client, sent, registry = await served(max_concurrent=2)
    sent.hold = asyncio.Event()
    held = [asyncio.create_task(client.post(url(), data=ONE_CLICK)) for _ in range(2)]
    async with asyncio.timeout(10):
        await sent.two_held.wait()
    assert registry.get_sample_value("mailpipe_unsubscribe_in_flight") == 2
    extra = await client.post(url(), data=ONE_CLICK)
    assert extra.status == 503
    sent.hold.set()
    assert [(await r).status for r in held] == [200, 200]


def test_judge_form_accepts_exactly_the_one_click_form() -> None:
    from multidict import MultiDict

    assert judge_form(MultiDict(ONE_CLICK)) is None
    refused = judge_form(MultiDict([("List-Unsubscribe", "One-Click")] * 2))
    assert refused is not None and refused.status == 400


def test_keys_are_read_from_a_mounted_secret_skipping_the_kubelets_dot_entries(
    tmp_path: Any,
) -> None:
    (tmp_path / "ka").write_bytes(b"k" * 32)
    (tmp_path / "kb").write_bytes(b"m" * 32)
    (tmp_path / "..data").mkdir()
    (tmp_path / ".hidden").write_bytes(b"short")
    keys = keys_from_directory(tmp_path)
    assert set(keys.keys) == {"ka", "kb"} and keys.current == "kb"


async def test_the_confirm_pages_form_posts_the_one_click_body_to_the_url_shown(
    served: Any,
) -> None:
    """No action attribute: behind an ingress that rewrites the path, the form still
    posts to the URL the browser shows; its fields are exactly the one-click form."""
    import re

    client, sent, _ = await served()
    page = await (await client.get(url())).text()
    form = re.search(r"<form ([^>]*)>(.*?)</form>", page)
    assert form is not None and "action" not in form.group(1)
    fields = dict(
        re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]+)">', form.group(2))
    )
    assert (await client.post(url(), data=fields)).status == 200 and len(sent.records) == 2
