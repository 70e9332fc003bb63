"""Delivery status notifications: RFC 3464 reports and the free-text bounces
real MTAs still send, as one value per recipient.

A standard DSN is `multipart/report; report-type=delivery-status`: a
human-readable part, a `message/delivery-status` part (one block of
per-message fields, then one block per recipient: Action, Status,
Diagnostic-Code, Final-Recipient, Original-Recipient, Remote-MTA), and
usually the original message or its headers. Postfix, Exim 4, Exchange and
Gmail all send it. Older or odd MTAs (qmail, some appliances, Exim without
its DSN option) send a plain text message instead; from those the enhanced
status code, the reply code and the text around them are what can be read,
and the recipients are the addresses the text names (`parse_nonstandard`).

Which recipient a report is about is ultimately the VERP token's business
(the receiver checks it); this module only reads what the report says.
Pure: bytes or a parsed message in, a `DSN` or `ReportError` out.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from email.message import Message

from .mime import (
    ENHANCED,
    MAX_TEXT_CHARS,
    ReportError,
    address_of,
    clean,
    first_code,
    load,
    original_headers,
    text_of,
)

MAX_RECIPIENTS = 100  # per report; one of our messages has at most this many of a domain's
# A free-text bounce names the failing address near its code; how many addresses
# of such a text are taken at most (the rest is quoted history, signatures).
MAX_TEXT_ADDRESSES = 20
_ADDRESS = re.compile(
    r"<?([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63})>?"
)
# A diagnostic text with an enhanced code, as a free-text bounce quotes it.
_DIAGNOSTIC_LINE = re.compile(r"[^\n]*(?<![\d.])[245]\.\d{1,3}\.\d{1,3}(?![\d.])[^\n]*")


# Where MTAs start quoting the original inline ("--- Below this line is a copy
# of the message." qmail; "------ This is a copy of the message, including all
# the headers. ------" Exim; "----- Original message -----", "Original message follows").
_ORIGINAL_FOLLOWS = re.compile(
    r"^.*(below this line is a copy of the message|this is a copy of the message"
    r"|original message follows|-+ ?original message ?-+|-+ ?the header of the original"
    r"|-+ ?returned message|-+ ?unsent message below).*$",
    re.IGNORECASE | re.MULTILINE,
)


class Action(enum.StrEnum):
    """RFC 3464 2.3.3."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


@dataclass(frozen=True)
class RecipientStatus:
    """What a report says about one recipient."""

    recipient: str  # Final-Recipient (or Original-Recipient when it has none)
    action: Action
    status: str | None  # RFC 3463 enhanced code, "5.1.1"
    smtp_code: int | None  # from an smtp Diagnostic-Code
    diagnostic: str  # the Diagnostic-Code text (or the free text around the code)
    original_recipient: str | None = None
    remote_mta: str | None = None


@dataclass(frozen=True)
class DSN:
    recipients: tuple[RecipientStatus, ...]
    standard: bool  # an RFC 3464 report (False: read from free text)
    original: Message | None  # headers of the message it is about, when quoted
    reporting_mta: str | None = None


def is_delivery_report(msg: Message) -> bool:
    return (
        msg.get_content_type() == "multipart/report"
        and str(msg.get_param("report-type", "", header="content-type")).lower()
        == "delivery-status"
    )


def parse(data: bytes) -> DSN:
    """A DSN from message bytes: standard when it is one, else read from its text."""
    msg = load(data)
    return parse_message(msg) if is_delivery_report(msg) else parse_nonstandard(msg)


def parse_message(msg: Message) -> DSN:
    """An RFC 3464 report; ReportError when it has no usable recipient block."""
    status_part = next(
        (
            p
            for p in msg.walk()
            if p.get_content_type() in ("message/delivery-status", "message/global-delivery-status")
        ),
        None,
    )
    if status_part is None:
        raise ReportError("not_a_report", "multipart/report without a message/delivery-status part")
    blocks = status_part.get_payload()
    if not isinstance(blocks, list) or not blocks:
        raise ReportError("malformed", "message/delivery-status part has no fields")
    per_message, per_recipient = blocks[0], blocks[1:]
    if len(per_recipient) > MAX_RECIPIENTS:
        raise ReportError(
            "bomb", f"{len(per_recipient)} recipient blocks in one report, over {MAX_RECIPIENTS}"
        )
    # Some MTAs write everything in one block (no blank line after the
    # per-message fields): then the first block is also the recipient's.
    if not per_recipient and isinstance(per_message, Message) and per_message.get("action"):
        per_recipient = [per_message]
    recipients = []
    for block in per_recipient:
        if not isinstance(block, Message):
            continue
        found = _recipient(block)
        if found is not None:
            recipients.append(found)
    if not recipients:
        raise ReportError("malformed", "no recipient block with an address and an action")
    mta = clean(per_message.get("reporting-mta"), 300) if isinstance(per_message, Message) else ""
    return DSN(tuple(recipients), True, original_headers(msg), mta or None)


def _recipient(block: Message) -> RecipientStatus | None:
    final = address_of(block.get("final-recipient"))
    original = address_of(block.get("original-recipient"))
    action_text = clean(block.get("action"), 40).lower().split(" ")[0]
    if (final or original) is None or not action_text:
        return None
    try:
        action = Action(action_text)
    except ValueError:
        return None
    status_match = ENHANCED.search(clean(block.get("status"), 40))
    diagnostic = clean(block.get("diagnostic-code"))
    kind, sep, text = diagnostic.partition(";")
    if sep and kind.strip().lower() in ("smtp", "x-postfix", "x-unix", "x-local"):
        diagnostic = text.strip()
    code, enhanced_in_text = first_code(diagnostic) if diagnostic else (None, None)
    if code is not None and not (diagnostic.startswith(str(code)) or sep):
        code = None  # a number in free text, not a reply
    status = ".".join(status_match.groups()) if status_match else enhanced_in_text
    # Exim writes "Status: 5.0.0" and the receiver's "552 5.2.2 mailbox is
    # full" in the diagnostic: the receiver's code says more.
    if status and status.endswith(".0.0") and enhanced_in_text and enhanced_in_text[0] == status[0]:
        status = enhanced_in_text
    return RecipientStatus(
        recipient=final or original or "",
        action=action,
        status=status,
        smtp_code=code,
        diagnostic=diagnostic,
        original_recipient=original,
        remote_mta=clean(block.get("remote-mta"), 300) or None,
    )


def parse_nonstandard(msg: Message) -> DSN:
    """A free-text bounce: the failing addresses and the diagnostic line with an
    enhanced code (or a reply code). ReportError "not_a_report" when the text
    has neither: an ordinary message, not a bounce."""
    text = _human_text(msg)
    match = _DIAGNOSTIC_LINE.search(text)
    diagnostic = clean(match.group()) if match else ""
    code, enhanced = first_code(diagnostic) if diagnostic else (None, None)
    if enhanced is None:
        code, enhanced = _bare_code(text)
        diagnostic = clean(_line_with(text, str(code))) if code is not None else ""
    if code is None and enhanced is None:
        raise ReportError("not_a_report", "no delivery status (reply or enhanced code) in the text")
    original = original_headers(msg)
    # The report's own addressee (our Return-Path) and the original's sender are
    # never the failed recipient.
    ours = [clean(msg.get("to"), 400).lower()]
    if original is not None:
        ours.append(clean(original.get("from"), 400).lower())
    addresses: list[str] = []
    for m in _ADDRESS.finditer(text[:MAX_TEXT_CHARS]):
        found = m.group(1)
        low = found.lower()
        if low.startswith(("mailer-daemon@", "postmaster@")) or any(low in o for o in ours):
            continue
        if found not in addresses:
            addresses.append(found)
        if len(addresses) >= MAX_TEXT_ADDRESSES:
            break
    failed = enhanced.startswith("5") if enhanced else code is not None and code >= 500
    action = Action.FAILED if failed else Action.DELAYED
    recipients = tuple(
        RecipientStatus(a, action, enhanced, code, diagnostic) for a in addresses
    ) or (RecipientStatus("", action, enhanced, code, diagnostic),)
    return DSN(recipients, False, original)


def _human_text(msg: Message) -> str:
    """The first text/plain part that is not the quoted original, cut where an
    inline copy of the original begins (qmail, Exim without DSN)."""
    for part in msg.walk():
        if part.get_content_type() == "message/rfc822":
            break  # what follows is the original, not the report
        if part.get_content_type() == "text/plain":
            text = text_of(part)
            cut = _ORIGINAL_FOLLOWS.search(text)
            return text[: cut.start()] if cut else text
    return ""


def _bare_code(text: str) -> tuple[int | None, str | None]:
    """A reply code as "Remote host said: 550 ..." or "said: 550 ...": only after
    wording that makes it a reply, since a bare number in a text is no status."""
    m = re.search(
        r"(?:said|host|server|error|reply|response)[^\n]{0,120}?\b([45]\d\d)\b", text, re.I
    )
    return (int(m.group(1)), None) if m else (None, None)


def _line_with(text: str, needle: str) -> str:
    for line in text.splitlines():
        if needle in line:
            return line
    return ""
