"""What comes back, read: DSNs as real MTAs write them, ARF complaints,
auto-replies that must never count as bounces, and hostile messages set aside
with a reason (issue 20, items 2 and 4)."""

from __future__ import annotations

import pytest

from mailpipe.contracts.bounces import default_classifier
from mailpipe.contracts.feedback_token import (
    Purpose,
    TokenKeys,
    TokenPayload,
    return_path,
    sign,
)
from mailpipe.contracts.warmup import WarmupLedger
from mailpipe.contracts.wire import Disposition, Event, SuppressionReason, decode_event, encode
from mailpipe.inbound import arf, dsn
from mailpipe.inbound.feedback import Kind, Outcome, Receiver
from mailpipe.inbound.mime import MAX_PARTS, MAX_REPORT_BYTES, ReportError
from tests.relay.unit.conftest import make_config

from .. import samples as S

NOW = 1_800_000_000.0
KEYS = TokenKeys({"ka": b"k" * 32}, "ka")
DOMAIN = "bounce.sender.test"
RCPT = "ann@example.test"


def payload(recipient: str = RCPT, **kw: object) -> TokenPayload:
    fields: dict[str, object] = {
        "namespace": "mail",
        "pool": "marketing",
        "recipient": recipient,
        "message_id": "spring-000017",
        "campaign": "spring",
        "variant": "b",
        "issued_at": int(NOW),
    }
    fields.update(kw)
    return TokenPayload(**fields)  # type: ignore[arg-type]


def receiver() -> Receiver:
    return Receiver(
        namespace="mail",
        pool="marketing",
        bounce_domain=DOMAIN,
        keys=KEYS,
        classifier=default_classifier(),
        validity_seconds=60 * 86400,
    )


def message(template: str, p: TokenPayload | None = None, rcpt: str = RCPT) -> bytes:
    p = p or payload()
    return S.fill(
        template,
        rp=return_path(sign(p, Purpose.BOUNCE, KEYS), DOMAIN),
        rcpt=rcpt,
        trace=sign(p, Purpose.TRACE, KEYS),
        fbl=f"fbl@{DOMAIN}",
    )


def decide(template: str, *, envelope: TokenPayload | None = None, mail_from: str = "") -> Outcome:
    return receiver().decide(message(template), envelope or payload(), mail_from, NOW + 60)


# -- the parsers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "status", "code", "words"),
    [
        (S.POSTFIX_DSN, "5.1.1", 550, "User unknown in local recipient table"),
        (S.EXIM_DSN, "5.2.2", 552, "mailbox is full"),  # Status 5.0.0: the diagnostic says more
        (S.EXCHANGE_DSN, "5.1.10", 550, "RecipientNotFound; Recipient not found"),
        (S.GMAIL_DSN, "5.1.1", 550, "does not exist. Please try"),
    ],
    ids=["postfix", "exim", "exchange", "gmail"],
)
def test_a_standard_dsn_gives_action_status_and_diagnostic_per_recipient(
    template: str, status: str, code: int, words: str
) -> None:
    report = dsn.parse(message(template))
    assert report.standard
    assert report.reporting_mta and report.reporting_mta.startswith("dns;")
    (one,) = report.recipients
    assert (one.recipient, one.action, one.status, one.smtp_code) == (
        RCPT,
        dsn.Action.FAILED,
        status,
        code,
    )
    assert words in one.diagnostic
    assert "\n" not in one.diagnostic  # folded lines joined
    assert report.original is not None and report.original.get("x-mailpipe-trace")


def test_a_free_text_bounce_gives_its_enhanced_code_and_the_failed_address_only() -> None:
    report = dsn.parse(message(S.QMAIL_BOUNCE))
    assert not report.standard
    (one,) = report.recipients  # not our Return-Path, not the quoted original's sender
    assert (one.recipient, one.action, one.status, one.smtp_code) == (
        RCPT,
        dsn.Action.FAILED,
        "5.1.1",
        550,
    )
    assert "User unknown" in one.diagnostic
    assert one.remote_mta is None  # a free text names no Remote-MTA field


def test_a_report_with_thousands_of_recipient_blocks_is_a_bomb() -> None:
    block = "Final-Recipient: rfc822; x{n}@example.test\nAction: failed\nStatus: 5.1.1\n\n"
    blocks = "".join(block.format(n=n) for n in range(dsn.MAX_RECIPIENTS + 1))
    bomb = S.POSTFIX_DSN.replace(
        "Final-Recipient: rfc822; {rcpt}\n", blocks + "Final-Recipient: rfc822; {rcpt}\n"
    )
    with pytest.raises(ReportError) as err:
        dsn.parse(message(bomb))
    assert err.value.reason == "bomb"


def test_deeply_nested_or_many_parts_is_a_bomb_and_a_huge_report_too_large() -> None:
    nested = "Content-Type: multipart/mixed; boundary=b0\n\n"
    for depth in range(1, 30):
        nested += f"--b{depth - 1}\nContent-Type: multipart/mixed; boundary=b{depth}\n\n"
    with pytest.raises(ReportError) as err:
        dsn.parse(nested.encode())
    assert err.value.reason == "bomb"
    many = (
        "Content-Type: multipart/mixed; boundary=b\n\n" + "--b\n\nx\n" * (MAX_PARTS + 5) + "--b--\n"
    )
    with pytest.raises(ReportError) as err:
        dsn.parse(many.encode())
    assert err.value.reason == "bomb"
    with pytest.raises(ReportError) as err:
        dsn.parse(b"x" * (MAX_REPORT_BYTES + 1))
    assert err.value.reason == "too_large"


def test_an_arf_report_gives_type_recipient_and_the_tokens_of_the_original() -> None:
    p = payload()
    fb = arf.parse(message(S.YAHOO_ARF, p))
    assert fb.is_complaint and fb.feedback_type is arf.FeedbackType.ABUSE
    assert fb.original_rcpt_to == (RCPT,)
    assert fb.original_mail_from == return_path(sign(p, Purpose.BOUNCE, KEYS), DOMAIN)
    assert (fb.source_ip, fb.original_message_id) == ("192.0.2.1", "<camp-1@sender.test>")
    assert fb.user_agent == "Yahoo!-Mail-Feedback/2.0"
    assert fb.trace_tokens == (sign(p, Purpose.TRACE, KEYS),)
    assert return_path(sign(p, Purpose.BOUNCE, KEYS), DOMAIN) in fb.return_paths


@pytest.mark.parametrize(
    ("written", "read"),
    [("not-spam", arf.FeedbackType.NOT_SPAM), ("auth-failure", arf.FeedbackType.AUTH_FAILURE)],
)
def test_an_arf_report_of_another_type_is_read_but_is_no_complaint(
    written: str, read: arf.FeedbackType
) -> None:
    data = message(S.YAHOO_ARF.replace("Feedback-Type: abuse", f"Feedback-Type: {written}"))
    fb = arf.parse(data)
    assert fb.feedback_type is read and not fb.is_complaint
    out = receiver().decide(data, None, "", NOW + 60)
    assert (out.kind, out.reason, out.events) == (Kind.IGNORED, f"feedback_{read.name.lower()}", ())


@pytest.mark.parametrize("action", [dsn.Action.RELAYED, dsn.Action.EXPANDED, dsn.Action.DELIVERED])
def test_a_success_notice_is_read_and_changes_nothing(action: dsn.Action) -> None:
    out = decide(S.POSTFIX_DSN.replace("Action: failed", f"Action: {action.value}"))
    assert (out.kind, out.events, out.suppressions) == (Kind.IGNORED, (), ())


# -- the decisions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "bounce_class", "suppresses"),
    [
        (S.POSTFIX_DSN, "invalid_recipient", True),
        (S.EXCHANGE_DSN, "invalid_recipient", True),
        (S.GMAIL_DSN, "invalid_recipient", True),
        (S.QMAIL_BOUNCE, "invalid_recipient", True),
        (S.EXIM_DSN, "mailbox_full", False),  # after 3 within 30 days
        (S.POLICY_DSN, "reputation", False),  # our IP's reputation: nothing about the address
    ],
    ids=["postfix", "exchange", "gmail", "qmail", "exim-full", "blocklisted"],
)
def test_a_bounce_is_a_bounced_event_with_its_class_and_suppresses_only_a_bad_address(
    template: str, bounce_class: str, suppresses: bool
) -> None:
    out = decide(template)
    assert out.kind is Kind.BOUNCE
    (event,) = out.events
    assert event.disposition is Disposition.BOUNCED
    assert event.bounce_class == bounce_class
    assert (event.recipient, event.campaign, event.variant, event.message_id) == (
        RCPT,
        "mail/spring",
        "b",
        "spring-000017",
    )
    assert decode_event(encode(event)) == event  # well-formed on the wire
    if suppresses:
        (sup,) = out.suppressions
        assert (sup.address, sup.reason) == (RCPT, SuppressionReason.HARD_BOUNCE)
        assert sup.source == "feedback:mail/marketing"
    else:
        assert out.suppressions == ()


def test_a_threshold_class_suppresses_at_its_nth_bounce() -> None:
    r = receiver()
    data = message(S.EXIM_DSN)
    outs = [r.decide(data, payload(), "", NOW + i) for i in range(3)]
    assert [len(o.suppressions) for o in outs] == [0, 0, 1]
    assert "mailbox_full 3 times within 30 days" in (outs[2].suppressions[0].detail or "")


def test_a_delay_notice_is_a_deferral_never_a_bounce() -> None:
    out = decide(S.POSTFIX_DELAY)
    assert out.kind is Kind.DELAY
    (event,) = out.events
    assert event.disposition is Disposition.DEFERRED and out.suppressions == ()


@pytest.mark.parametrize("template", [S.OUT_OF_OFFICE, S.VACATION_NO_HEADERS, S.X_AUTOREPLY])
def test_an_auto_reply_changes_nothing(template: str) -> None:
    # A vacation text quoting "550 5.1.1" is still not a bounce.
    out = decide(template, mail_from="")
    assert out.kind is Kind.AUTO_REPLY
    assert (out.events, out.suppressions) == ((), ())


def test_an_arf_complaint_is_complained_and_a_complaint_suppression() -> None:
    out = receiver().decide(message(S.YAHOO_ARF), None, "", NOW + 60)
    assert out.kind is Kind.COMPLAINT
    (event,) = out.events
    assert (event.disposition, event.recipient, event.campaign) == (
        Disposition.COMPLAINED,
        RCPT,
        "mail/spring",
    )
    (sup,) = out.suppressions
    assert sup.reason is SuppressionReason.COMPLAINT and sup.address == RCPT


def test_a_complaints_source_ip_reaches_the_warm_up_safeguard() -> None:
    """The report's Source-IP rides on the complained event, so the relays' warm-up
    ledger (which reads the events topic) pauses a warming IP on its complaint rate;
    a value that is not an address is dropped, never counted against some IP."""
    out = receiver().decide(message(S.YAHOO_ARF), None, "", NOW + 60)
    (event,) = out.events
    assert event.egress_ip == "192.0.2.1"  # the sample's Source-IP
    config = make_config(
        egress=[
            {"address": "192.0.2.1", "helo": "cold.test", "warmup": True},
            {"address": "192.0.2.2", "helo": "warm.test"},
        ],
        warmup={"schedule": [{"day": 1, "daily_limit": 1000}], "min_sample": 10},
    )
    ledger = WarmupLedger(config, "relay-0")
    for i in range(10):
        delivered = Event(
            message_id=f"m{i}",
            recipient=f"u{i}@x.test",
            domain="x.test",
            disposition=Disposition.DELIVERED,
            time=NOW,
            egress_ip="192.0.2.1",
            relay="relay-1",
        )
        ledger.observe(delivered, replaying=False)
    ledger.observe(decode_event(encode(event)), replaying=False)  # as relays read it
    [report] = [r for r in ledger.report(NOW + 61) if r.address == "192.0.2.1"]
    assert report.paused_reason is not None and "complaint rate" in report.paused_reason
    forged = message(S.YAHOO_ARF.replace("Source-IP: 192.0.2.1", "Source-IP: 192.0.2.1; drop"))
    (event,) = receiver().decide(forged, None, "", NOW + 60).events
    assert event.egress_ip is None


def test_a_redacted_complaint_is_attributed_by_the_original_headers() -> None:
    out = receiver().decide(message(S.REDACTED_ARF), None, "", NOW + 60)
    assert out.kind is Kind.COMPLAINT
    assert out.events[0].recipient == RCPT  # from the token, not "redacted@redacted"


def test_a_complaint_for_a_message_never_sent_is_set_aside() -> None:
    forged = S.YAHOO_ARF.replace("X-Mailpipe-Trace: {trace}", "X-Mailpipe-Trace: ta.ka.x.y")
    data = S.fill(forged, rp=f"b-nope@{DOMAIN}", rcpt=RCPT, trace="", fbl="fbl@x")
    out = receiver().decide(data, None, "", NOW)
    assert (out.kind, out.reason, out.events) == (Kind.SET_ASIDE, "unattributed", ())


def test_a_complaint_of_another_namespace_is_set_aside() -> None:
    foreign = payload(namespace="other")
    out = receiver().decide(message(S.YAHOO_ARF, foreign), None, "", NOW + 60)
    assert (out.kind, out.reason) == (Kind.SET_ASIDE, "unattributed")


def test_a_token_pins_the_report_to_its_recipient() -> None:
    # A report that names another address of the domain cannot suppress it.
    data = message(S.POSTFIX_DSN, payload(), rcpt="ceo@example.test")
    out = receiver().decide(data, payload(), "", NOW)
    assert [e.recipient for e in out.events] == [RCPT]
    assert [s.address for s in out.suppressions] == [RCPT]


def test_a_token_of_several_recipients_takes_the_reports_recipients_of_its_domain() -> None:
    p = payload(recipient="@example.test")
    out = receiver().decide(message(S.POSTFIX_DSN, p, rcpt="bob@example.test"), p, "", NOW)
    assert [e.recipient for e in out.events] == ["bob@example.test"]
    other = receiver().decide(message(S.POSTFIX_DSN, p, rcpt="bob@elsewhere.test"), p, "", NOW)
    assert (other.kind, other.reason) == (Kind.SET_ASIDE, "unattributed")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (S.fill(S.NOT_A_REPORT, rp="x@y", rcpt=RCPT), "not_a_report"),
        (b"", "not_a_report"),
        (b"\xff\xfe\x00garbage", "not_a_report"),
        (
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
            b"--x\r\nContent-Type: message/delivery-status\r\n\r\n"
            b"Reporting-MTA: dns; a\r\n--x--\r\n",
            "malformed",
        ),
    ],
    ids=["plain-mail", "empty", "binary", "no-recipient-block"],
)
def test_what_is_not_a_report_is_set_aside_with_its_reason(data: bytes, reason: str) -> None:
    out = receiver().decide(data, payload(), "someone@else.test", NOW)
    assert (out.kind, out.reason, out.events, out.suppressions) == (Kind.SET_ASIDE, reason, (), ())
