"""Complaint reports: RFC 5965 Abuse Reporting Format, as mailbox providers'
feedback loops send them (Yahoo, Microsoft JMRP/SNDS, Comcast, Fastmail...).

An ARF report is `multipart/report; report-type=feedback-report`: a
human-readable part, a `message/feedback-report` part (Feedback-Type,
User-Agent, Version, Original-Mail-From, Original-Rcpt-To, Arrival-Date,
Source-IP, Reported-Domain), and the original message or its headers. Many
loops redact the recipient (Original-Rcpt-To left out, the To header
blanked), so the original's own headers are what attribute it: the VERP
Return-Path and the trace header carry signed tokens (`feedback_token`);
the receiver verifies them, this module only collects them.

Only `abuse` (and the older `fraud`, `virus`: someone called it unwanted)
is a complaint; `not-spam`, `auth-failure` and `other` are read but not
counted. Pure: bytes or a parsed message in, a `Feedback` or `ReportError` out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from email.message import Message

from .mime import ReportError, address_of, clean, load, original_headers

TRACE_HEADER = "X-Mailpipe-Trace"
MAX_RCPT_TO = 20  # Original-Rcpt-To fields kept: a report is about one message


class FeedbackType(enum.StrEnum):
    """RFC 5965 3.5 and the IANA registry."""

    ABUSE = "abuse"
    FRAUD = "fraud"
    VIRUS = "virus"
    AUTH_FAILURE = "auth-failure"
    NOT_SPAM = "not-spam"
    OTHER = "other"


COMPLAINTS = frozenset({FeedbackType.ABUSE, FeedbackType.FRAUD, FeedbackType.VIRUS})


@dataclass(frozen=True)
class Feedback:
    feedback_type: FeedbackType
    original_rcpt_to: tuple[str, ...]  # often empty: loops redact the recipient
    original_mail_from: str | None
    user_agent: str
    source_ip: str | None
    # Where the original named our tokens: its Return-Path (a VERP address),
    # Original-Mail-From (the same, from the report), the trace header.
    return_paths: tuple[str, ...]
    trace_tokens: tuple[str, ...]
    original_to: str | None  # the To of the original, when not redacted
    original_message_id: str | None

    @property
    def is_complaint(self) -> bool:
        return self.feedback_type in COMPLAINTS


def is_feedback_report(msg: Message) -> bool:
    return (
        msg.get_content_type() == "multipart/report"
        and str(msg.get_param("report-type", "", header="content-type")).lower()
        == "feedback-report"
    )


def parse(data: bytes) -> Feedback:
    msg = load(data)
    if not is_feedback_report(msg):
        raise ReportError("not_a_report", "not a multipart/report of report-type feedback-report")
    return parse_message(msg)


def parse_message(msg: Message) -> Feedback:
    part = next((p for p in msg.walk() if p.get_content_type() == "message/feedback-report"), None)
    if part is None:
        raise ReportError("not_a_report", "feedback report without a message/feedback-report part")
    blocks = part.get_payload()
    fields = blocks[0] if isinstance(blocks, list) and blocks else None
    if not isinstance(fields, Message):
        raise ReportError("malformed", "message/feedback-report part has no fields")
    type_text = clean(fields.get("feedback-type"), 40).lower()
    try:
        feedback_type = FeedbackType(type_text)
    except ValueError:
        if not type_text:
            raise ReportError("malformed", "feedback report without Feedback-Type") from None
        feedback_type = FeedbackType.OTHER  # RFC 5965 allows registered extensions
    rcpts = []
    for value in (fields.get_all("original-rcpt-to") or [])[:MAX_RCPT_TO]:
        found = address_of(value)
        if found is not None:
            rcpts.append(found)
    mail_from = address_of(fields.get("original-mail-from"))
    original = original_headers(msg)
    return_paths: list[str] = []
    traces: list[str] = []
    to = message_id = None
    if original is not None:
        for value in original.get_all("return-path") or []:
            found = address_of(value)
            if found is not None:
                return_paths.append(found)
        traces = [clean(v, 2100) for v in original.get_all(TRACE_HEADER) or [] if clean(v)]
        to = address_of(original.get("to"))
        message_id = clean(original.get("message-id"), 300) or None
    if mail_from is not None:
        return_paths.append(mail_from)
    return Feedback(
        feedback_type=feedback_type,
        original_rcpt_to=tuple(rcpts),
        original_mail_from=mail_from,
        user_agent=clean(fields.get("user-agent"), 200),
        source_ip=clean(fields.get("source-ip"), 60) or None,
        return_paths=tuple(return_paths),
        trace_tokens=tuple(traces),
        original_to=to,
        original_message_id=message_id,
    )
