"""The receiver's SMTP policy without a network: what RCPT takes and refuses,
what DATA produces, that a report is answered 250 only once Kafka has it (451
otherwise), and that metrics count by fixed words only."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from aiosmtpd.smtp import Envelope

from mailpipe.contracts.config import FeedbackSettings
from mailpipe.contracts.feedback_token import Purpose, return_path, sign
from mailpipe.devstack.procs import free_port
from mailpipe.inbound import feedback_server
from mailpipe.inbound.feedback_server import FeedbackHandler, FeedbackMetrics, start_server

from .. import samples as S
from .test_reports import DOMAIN, KEYS, NOW, RCPT, payload, receiver

TOPICS = ("p.events", "ns.suppressions", "p.dlq")


class Sink:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes | None, bytes]] = []
        self.fail = False

    async def produce(self, items: Sequence[tuple[str, bytes | None, bytes]]) -> None:
        if self.fail:
            raise ConnectionError("broker away")
        self.items.extend(items)


def handler(sink: Sink) -> FeedbackHandler:
    settings = FeedbackSettings(bounce_domain=DOMAIN, keys_path="/unused")
    return FeedbackHandler(receiver(), settings, TOPICS, sink, FeedbackMetrics(), lambda: NOW)


def sample(metrics: FeedbackMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_rcpt_takes_valid_tokens_and_the_fbl_address_and_refuses_the_rest() -> None:
    h = handler(Sink())
    env = Envelope()
    rp = return_path(sign(payload(), Purpose.BOUNCE, KEYS), DOMAIN)
    assert (await h.handle_RCPT(None, None, env, rp, [])).startswith("250")  # type: ignore[arg-type]
    assert (await h.handle_RCPT(None, None, env, f"FBL@{DOMAIN}", [])).startswith("250")  # type: ignore[arg-type]
    refused = await h.handle_RCPT(None, None, env, "x@elsewhere.test", [])  # type: ignore[arg-type]
    assert refused.startswith("550 5.7.1") and "relaying denied" in refused
    wrong = await h.handle_RCPT(None, None, env, rp.replace("b-b", "b-t", 1), [])  # type: ignore[arg-type]
    assert wrong.startswith("550")
    assert env.rcpt_tos == [rp, f"FBL@{DOMAIN}"]
    assert (
        sample(h.metrics, "mailpipe_feedback_refused_total", stage="rcpt", reason="foreign_domain")
        == 1
    )
    assert sample(h.metrics, "mailpipe_feedback_refused_total", stage="rcpt", reason="purpose") == 1


async def test_data_is_answered_250_only_after_kafka_has_its_records() -> None:
    sink = Sink()
    h = handler(sink)
    rp = return_path(sign(payload(), Purpose.BOUNCE, KEYS), DOMAIN)
    env = Envelope()
    env.mail_from = "<>"
    env.rcpt_tos = [rp]
    env.original_content = S.fill(S.POSTFIX_DSN, rp=rp, rcpt=RCPT)
    sink.fail = True
    assert (await h.handle_DATA(None, None, env)).startswith("451 4.3.0")  # type: ignore[arg-type]
    assert sample(h.metrics, "mailpipe_feedback_kafka_failures_total") == 1
    assert (
        sample(h.metrics, "mailpipe_feedback_messages_total", kind="bounce", reason="bounce") == 0
    )
    sink.fail = False
    assert (await h.handle_DATA(None, None, env)).startswith("250")  # type: ignore[arg-type]
    assert [topic for topic, _, _ in sink.items] == ["p.events", "ns.suppressions"]
    assert (
        sample(h.metrics, "mailpipe_feedback_messages_total", kind="bounce", reason="bounce") == 1
    )


async def test_a_set_aside_report_goes_to_the_dlq_with_its_reason() -> None:
    sink = Sink()
    h = handler(sink)
    env = Envelope()
    env.mail_from = "x@y.test"
    env.rcpt_tos = [f"fbl@{DOMAIN}"]
    env.original_content = b"Subject: hello\r\n\r\nhi\r\n"
    assert (await h.handle_DATA(None, None, env)).startswith("250")  # type: ignore[arg-type]
    ((topic, _, value),) = sink.items
    assert topic == "p.dlq" and b'"reason": "not_a_report:' in value
    labels = {"kind": "set_aside", "reason": "not_a_report"}
    assert sample(h.metrics, "mailpipe_feedback_messages_total", **labels) == 1


async def test_a_connection_flood_beyond_the_session_cap_is_answered_421() -> None:
    host = "127.0.0.23"
    settings = FeedbackSettings(
        bounce_domain=DOMAIN, keys_path="/unused", listen_address=host, listen_port=free_port(host)
    )
    h = FeedbackHandler(receiver(), settings, TOPICS, Sink(), FeedbackMetrics(), max_sessions=2)
    server = await start_server(h, settings)
    held = []
    try:
        for _ in range(2):
            reader, writer = await asyncio.open_connection(host, settings.listen_port)
            assert (await reader.readline()).startswith(b"220")
            held.append(writer)
        reader, writer = await asyncio.open_connection(host, settings.listen_port)
        assert (await reader.readline()).startswith(b"421 4.7.0")
        assert await reader.read() == b""  # and closed
        writer.close()
        labels = {"stage": "connect", "reason": "too_many_sessions"}
        assert sample(h.metrics, "mailpipe_feedback_refused_total", **labels) == 1
        held.pop().close()  # a slot frees when a session ends
        await asyncio.sleep(0)
        for _ in range(100):
            if h.sessions < 2:
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(host, settings.listen_port)
        assert (await reader.readline()).startswith(b"220")
        held.append(writer)
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_a_report_kafka_never_acknowledges_is_answered_451_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Silent(Sink):
        async def produce(self, items: Sequence[tuple[str, bytes | None, bytes]]) -> None:
            await asyncio.Event().wait()  # a broker that takes the records and never answers

    monkeypatch.setattr(feedback_server, "ACK_TIMEOUT_SECONDS", 0.05)
    h = handler(Silent())
    rp = return_path(sign(payload(), Purpose.BOUNCE, KEYS), DOMAIN)
    env = Envelope()
    env.mail_from, env.rcpt_tos = "<>", [rp]
    env.original_content = S.fill(S.POSTFIX_DSN, rp=rp, rcpt=RCPT)
    assert (await h.handle_DATA(None, None, env)).startswith("451 4.3.0")  # type: ignore[arg-type]
    assert sample(h.metrics, "mailpipe_feedback_kafka_failures_total") == 1
