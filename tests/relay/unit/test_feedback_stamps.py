"""What a sent message carries so that what comes back finds it (issue 20,
item 1): a VERP Return-Path with a signed bounce token, a trace header, a
Feedback-ID, and the producer's Kafka headers carried onto the record's events."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from mailpipe.contracts.config import FeedbackSettings
from mailpipe.contracts.feedback_token import (
    Purpose,
    TokenError,
    token_of_address,
    verify,
)
from mailpipe.contracts.wire import decode_record
from mailpipe.relay.message import MessageError, build_message
from mailpipe.relay.stamps import Stamper

from .conftest import Harness, make_config, record_bytes

NOW = 1_700_000_000.0
DOMAIN = "bounce.sender.test"


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "ka").write_bytes(b"a" * 40)
    (keys / "kb").write_bytes(b"b" * 40)  # the newest id signs
    (keys / "..data").mkdir()  # the kubelet's Secret volume layout
    return keys


def feedback(key_dir: Path) -> dict[str, str]:
    return {"bounce_domain": DOMAIN, "keys_path": str(key_dir)}


def stamper(key_dir: Path) -> Stamper:
    return Stamper(FeedbackSettings(**feedback(key_dir)), "ns/pool")  # type: ignore[arg-type]


def test_the_return_path_and_the_trace_header_carry_verifiable_tokens(key_dir: Path) -> None:
    s = stamper(key_dir)
    record = decode_record(record_bytes("ann@d.test", variant="b"))
    stamp = s.stamp(record, NOW)
    token = token_of_address(stamp.return_path, DOMAIN)
    assert token is not None and token.startswith("bakb.")  # bounce token, key kb
    bounce = verify(token, Purpose.BOUNCE, s.keys, now=NOW, namespace="ns")
    assert (bounce.pool, bounce.recipient, bounce.message_id) == ("pool", "ann@d.test", record.id)
    assert (bounce.campaign, bounce.variant) == ("camp", "b")
    with pytest.raises(TokenError):  # a trace token cannot stand in for a return path
        verify(dict(stamp.headers)["X-Mailpipe-Trace"], Purpose.BOUNCE, s.keys, now=NOW)

    message = build_message(record, NOW, None, stamp.headers)
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    trace = verify(parsed["X-Mailpipe-Trace"], Purpose.TRACE, s.keys, now=NOW)
    assert trace == bounce
    assert parsed["Feedback-ID"] == "camp:pool:ns:mailpipe"


def test_a_record_of_several_recipients_names_their_domain(key_dir: Path) -> None:
    s = stamper(key_dir)
    stamp = s.stamp(decode_record(record_bytes("a@d.test", "b@d.test")), NOW)
    token = token_of_address(stamp.return_path, DOMAIN)
    assert token is not None
    assert verify(token, Purpose.BOUNCE, s.keys, now=NOW).recipient == "@d.test"


def test_content_cannot_set_the_relays_own_headers() -> None:
    record = decode_record(
        record_bytes(
            "a@d.test", content={"subject": "s", "text": "t", "headers": [["Feedback-ID", "x"]]}
        )
    )
    with pytest.raises(MessageError, match="reserved"):
        build_message(record, NOW)


def test_a_raw_message_gets_the_stamp_first(key_dir: Path) -> None:
    record = decode_record(
        record_bytes(
            "a@d.test", content=None, raw="Subject: s\r\nFrom: n@sender.test\r\n\r\nhi\r\n"
        )
    )
    stamp = stamper(key_dir).stamp(record, NOW)
    message = build_message(record, NOW, None, stamp.headers)
    assert message.startswith(b"X-Mailpipe-Trace: ta")
    assert b"\r\nFeedback-ID: camp:pool:ns:mailpipe\r\n" in message


async def test_with_feedback_settings_mail_from_is_the_verp_return_path(key_dir: Path) -> None:
    h = Harness(make_config(feedback=feedback(key_dir)))
    h.put(record_bytes("ann@d.test"))
    await h.run_until(lambda: len(h.events()) == 1)
    (envelope,) = h.transport.envelopes
    assert envelope.sender.startswith("b-bakb.") and envelope.sender.endswith("@" + DOMAIN)
    assert b"X-Mailpipe-Trace: takb." in envelope.message


async def test_without_feedback_settings_mail_from_is_the_senders() -> None:
    h = Harness(make_config())
    h.put(record_bytes("ann@d.test"))
    await h.run_until(lambda: len(h.events()) == 1)
    (envelope,) = h.transport.envelopes
    assert envelope.sender == "news@sender.test"
    assert b"X-Mailpipe-Trace" not in envelope.message


def test_a_missing_key_secret_fails_the_config_not_a_message(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="feedback key Secret not readable"):
        Harness(make_config(feedback=feedback(tmp_path / "absent")))


async def test_the_producers_kafka_headers_are_carried_onto_the_records_events() -> None:
    h = Harness(make_config())
    h.transport.answer("later@d.test", "451 4.3.0 try again")
    trace = (("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),)
    h.source.append("p.outbound", 0, b"d.test", record_bytes("ok@d.test", "later@d.test"), trace)
    await h.run_until(lambda: len(h.events()) == 2)
    assert h.sink.headers["p.events"] == [trace, trace]
    # ...and onto its retry, so the retry's events carry them too.
    assert h.sink.headers["p.delay.1m"] == [trace]
