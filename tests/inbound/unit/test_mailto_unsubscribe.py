"""Unsubscribing by mail (RFC 2369 mailto) at the feedback receiver (issue 20, item 5):
`u-<token>@<bounce domain>` is taken at RCPT only with a valid unsubscribe
token, a person's mail to it writes exactly what the one-click endpoint writes
(but for the word saying how), answered 250 only once Kafka has it, and a
report, a bounce or an automatic reply to it never unsubscribes anybody."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import Envelope

from mailpipe.contracts.feedback_token import (
    UNSUBSCRIBE_PREFIX,
    Purpose,
    TokenPayload,
    return_path,
    sign,
)
from mailpipe.contracts.wire import (
    Disposition,
    Event,
    FeedbackReason,
    Suppression,
    SuppressionReason,
    decode_suppression,
    encode,
)
from mailpipe.inbound import unsubscribe
from mailpipe.inbound.feedback import Kind

from .. import samples as S
from .test_feedback_handler import Sink, handler, sample
from .test_reports import DOMAIN, KEYS, NOW, RCPT, payload, receiver

LISTED = payload(mailing_list="news")


def mailto(p: TokenPayload = LISTED, purpose: Purpose = Purpose.UNSUBSCRIBE) -> str:
    return return_path(sign(p, purpose, KEYS), DOMAIN, UNSUBSCRIBE_PREFIX)


PERSON = (
    "From: Ann Example <{rcpt}>\r\nTo: {rp}\r\nSubject: unsubscribe\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\nPlease take me off the list.\r\n"
)


def person(sender: str = RCPT) -> bytes:
    return PERSON.format(rcpt=sender, rp=mailto()).encode()


def test_a_persons_mail_writes_what_the_one_click_endpoint_writes_but_for_how() -> None:
    # Sent from another address than the token's (a forward rewrote it): the token decides.
    out = receiver().decide_unsubscribe(person("ann.work@elsewhere.test"), LISTED, "x@y.test", NOW)
    assert (out.kind, out.reason) == (Kind.UNSUBSCRIBE, "mailto")
    (event,) = out.events
    (sup,) = out.suppressions
    assert (event.disposition, event.recipient, event.campaign, event.reason) == (
        Disposition.UNSUBSCRIBED,
        RCPT,
        "mail/spring",
        FeedbackReason.MAILTO,
    )
    assert (sup.address, sup.reason, sup.list, sup.detail) == (
        RCPT,
        SuppressionReason.UNSUBSCRIBE,
        "news",
        "mailto",
    )
    _, one_click_sup = unsubscribe.suppression_of(LISTED, NOW)
    _, one_click_event = unsubscribe.event_of(LISTED, NOW)
    assert sup.model_copy(update={"detail": "one-click"}) == decode_suppression(one_click_sup)
    same = event.model_copy(update={"reason": "one-click", "relay": None})
    assert encode(same) == one_click_event


def _dsn_to_the_mailto() -> bytes:
    # A DSN whose recipient is the u- address: something mailed it and failed.
    return S.fill(S.POSTFIX_DSN, rp=mailto(), rcpt=mailto())


@pytest.mark.parametrize(
    ("data", "mail_from", "kind", "reason"),
    [
        (_dsn_to_the_mailto(), "", Kind.SET_ASIDE, "not_an_unsubscribe"),
        (person(), "", Kind.SET_ASIDE, "not_an_unsubscribe"),  # null sender: a notice
        (_dsn_to_the_mailto(), "bounces@mx.test", Kind.SET_ASIDE, "not_an_unsubscribe"),
        (
            S.fill(S.QMAIL_BOUNCE, rp=mailto(), rcpt=RCPT),
            "mailer-daemon@mx.test",
            Kind.SET_ASIDE,
            "not_an_unsubscribe",
        ),
        (
            S.fill(S.YAHOO_ARF, rp=mailto(), rcpt=RCPT, fbl=mailto()),
            "fbl@yahoo.test",
            Kind.SET_ASIDE,
            "not_an_unsubscribe",
        ),
        (S.fill(S.OUT_OF_OFFICE, rp=mailto(), rcpt=RCPT), RCPT, Kind.AUTO_REPLY, "auto_submitted"),
        (
            S.fill(S.VACATION_NO_HEADERS, rp=mailto(), rcpt=RCPT),
            RCPT,
            Kind.AUTO_REPLY,
            "vacation_subject",
        ),
        (S.fill(S.X_AUTOREPLY, rp=mailto(), rcpt=RCPT), RCPT, Kind.AUTO_REPLY, "x_autoreply"),
        (
            b"Auto-Submitted: auto-notified\r\n" + person(),
            RCPT,
            Kind.AUTO_REPLY,
            "auto_submitted",
        ),
        (b"Precedence: bulk\r\n" + person(), RCPT, Kind.AUTO_REPLY, "precedence"),
        (person() + b"x" * (2 * 1024 * 1024), RCPT, Kind.SET_ASIDE, "too_large"),
    ],
    ids=[
        "dsn-null-sender",
        "null-sender",
        "dsn-with-a-sender",
        "free-text-bounce",
        "arf",
        "out-of-office",
        "vacation-subject",
        "x-autoreply",
        "auto-notified",
        "bulk",
        "too-large",
    ],
)
def test_a_report_a_bounce_or_an_automatic_reply_never_unsubscribes(
    data: bytes, mail_from: str, kind: Kind, reason: str
) -> None:
    out = receiver().decide_unsubscribe(data, LISTED, mail_from, NOW)
    assert (out.kind, out.reason, out.events, out.suppressions) == (kind, reason, (), ())


def test_a_token_of_several_recipients_unsubscribes_nobody() -> None:
    several = payload(recipient="@example.test")
    out = receiver().decide_unsubscribe(person(), several, RCPT, NOW)
    assert (out.kind, out.reason, out.events) == (Kind.SET_ASIDE, "unattributed", ())


def _forged() -> str:
    local, _, domain = mailto().rpartition("@")
    return local[:-2] + ("bb" if local.endswith("aa") else "aa") + "@" + domain


RCPT_CASES = {
    "valid": (mailto(), "250 2.1.5"),
    "forged": (_forged(), "550 5.7.1 <{a}>: unsubscribe address signature does not verify"),
    "expired": (
        mailto(payload(issued_at=int(NOW) - 61 * 86400)),
        "550 5.1.1 <{a}>: unsubscribe address expired",
    ),
    "other-namespace": (
        mailto(payload(namespace="other")),
        "550 5.7.1 <{a}>: unsubscribe address of another namespace or pool",
    ),
    "other-pool": (
        mailto(payload(pool="other")),
        "550 5.7.1 <{a}>: unsubscribe address of another namespace or pool",
    ),
    "bounce-token": (
        mailto(purpose=Purpose.BOUNCE),
        "550 5.7.1 <{a}>: token is not an unsubscribe address",
    ),
    "unsubscribe-token-as-return-path": (
        return_path(sign(LISTED, Purpose.UNSUBSCRIBE, KEYS), DOMAIN),
        "550 5.7.1 <{a}>: token is not a return path",
    ),
    "other-domain": (
        mailto().replace(DOMAIN, "elsewhere.test"),
        "550 5.7.1 <{a}>: relaying denied",
    ),
}


@pytest.mark.parametrize(("address", "reply"), RCPT_CASES.values(), ids=RCPT_CASES.keys())
async def test_rcpt_takes_a_valid_unsubscribe_token_and_says_why_it_refuses_others(
    address: str, reply: str
) -> None:
    got = await handler(Sink()).handle_RCPT(None, None, Envelope(), address, [])  # type: ignore[arg-type]
    assert got.startswith(reply.format(a=address)), got


def _envelope(data: bytes, mail_from: str) -> Envelope:
    env = Envelope()
    env.mail_from = mail_from
    env.rcpt_tos = [mailto()]
    env.original_content = data
    return env


async def test_an_unsubscribe_by_mail_is_answered_250_only_once_kafka_has_it() -> None:
    sink = Sink()
    h = handler(sink)
    env = _envelope(person(), RCPT)
    sink.fail = True
    assert (await h.handle_DATA(None, None, env)).startswith("451 4.3.0")  # type: ignore[arg-type]
    assert sink.items == []
    labels = {"kind": "unsubscribe", "reason": "mailto"}
    assert sample(h.metrics, "mailpipe_feedback_messages_total", **labels) == 0
    sink.fail = False
    assert (await h.handle_DATA(None, None, env)).startswith("250")  # type: ignore[arg-type]
    (ev_topic, ev_key, ev_value), (sup_topic, sup_key, sup_value) = sink.items
    assert (ev_topic, ev_key) == ("p.events", b"mail/spring")
    assert Event.model_validate_json(ev_value).disposition is Disposition.UNSUBSCRIBED
    # Keyed as the one-click endpoint keys it: a list's entry beside the namespace's.
    assert (sup_topic, sup_key) == ("ns.suppressions", f"{RCPT.lower()} list=news".encode())
    assert Suppression.model_validate_json(sup_value).list == "news"
    assert sample(h.metrics, "mailpipe_feedback_messages_total", **labels) == 1


async def test_a_bounce_to_the_unsubscribe_address_is_set_aside_and_unsubscribes_nobody() -> None:
    sink = Sink()
    h = handler(sink)
    env = _envelope(_dsn_to_the_mailto(), "<>")
    assert (await h.handle_DATA(None, None, env)).startswith("250")  # type: ignore[arg-type]
    ((topic, _, value),) = sink.items
    assert topic == "p.dlq" and b'"reason": "not_an_unsubscribe:' in value


async def test_a_token_expiring_between_rcpt_and_data_is_never_read_as_a_report() -> None:
    # The unsubscribe token expires a moment after RCPT; the message is a DSN that
    # quotes a valid return path of the pool. Still nobody bounces or unsubscribes.
    clock = [NOW]
    h = handler(Sink())
    h.clock = lambda: clock[0]
    old = payload(issued_at=int(NOW) - 60 * 86400 + 5)
    address = mailto(old)
    env = Envelope()
    assert (await h.handle_RCPT(None, None, env, address, [])).startswith("250")  # type: ignore[arg-type]
    clock[0] = NOW + 10
    env.mail_from = "<>"
    rp = return_path(sign(payload(), Purpose.BOUNCE, KEYS), DOMAIN)
    env.original_content = S.fill(S.POSTFIX_DSN, rp=rp, rcpt=RCPT)
    assert (await h.handle_DATA(None, None, env)).startswith("250")  # type: ignore[arg-type]
    assert [topic for topic, _, _ in h.sink.items] == ["p.dlq"]  # type: ignore[attr-defined]
    labels = {"kind": "set_aside", "reason": "unattributed"}
    assert sample(h.metrics, "mailpipe_feedback_messages_total", **labels) == 1
