"""Loading a returned message safely, and what every report parser shares.

A report is hostile input: anyone can send one to the bounce domain. So it is
parsed with the standard library's `email` package under limits checked
before and during the walk (`MAX_REPORT_BYTES`, `MAX_PARTS`, `MAX_DEPTH`):
a 50 MB DSN or a message of ten thousand nested parts is set aside with a
reason, never parsed to the end. `compat32` is the policy because it keeps
header values as strings and never raises on a malformed one (the modern
policy raises on some RFC 2047 garbage while reading a header).

Every parser answers with a value or `ReportError(reason, message)`, whose
`reason` is a fixed word (a metrics label and the DLQ's reason), never text
from the message. Pure: no IO.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import re
from email.message import Message

MAX_REPORT_BYTES = 1024 * 1024  # a DSN is a few KB; quoting a 1 MB original is already generous
MAX_PARTS = 50  # a report has 2-3 parts; a multipart original quoted in full a few more
MAX_DEPTH = 8  # report > original > alternative > related > ...: deeper is a bomb
MAX_TEXT_CHARS = 64 * 1024  # of a human-readable part searched for codes and addresses
MAX_FIELD_CHARS = 2000  # of one report field kept (Event.reply's bound)

# RFC 3463 "class.subject.detail"; detail up to three digits (5.7.515).
ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# An SMTP reply code at the start of a reply, "550 " or "550-" (a multi-line reply).
REPLY_CODE = re.compile(r"(?<![\d.])([245]\d\d)(?:[ -]|$)")
_SPACES = re.compile(r"\s+")


class ReportError(ValueError):
    """A message that is not a usable report; `reason` is a fixed word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def load(data: bytes) -> Message:
    """The parsed message, or ReportError when it is too large or too complex."""
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError("too_large", f"report of {len(data)} bytes, over {MAX_REPORT_BYTES}")
    try:
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
    except (RecursionError, ValueError, TypeError, LookupError) as exc:
        raise ReportError("malformed", f"message does not parse: {type(exc).__name__}") from exc
    check_shape(msg)
    return msg


def check_shape(msg: Message) -> None:
    """Count parts and depth without recursion (a deep bomb must not blow the stack)."""
    stack: list[tuple[Message, int]] = [(msg, 0)]
    parts = 0
    while stack:
        part, depth = stack.pop()
        parts += 1
        if parts > MAX_PARTS:
            raise ReportError("bomb", f"more than {MAX_PARTS} MIME parts")
        if depth > MAX_DEPTH:
            raise ReportError("bomb", f"MIME parts nested deeper than {MAX_DEPTH}")
        try:
            payload = part.get_payload()
        except (ValueError, TypeError, LookupError) as exc:  # a charset like "a\x00b"
            raise ReportError("malformed", f"a part does not decode: {type(exc).__name__}") from exc
        if isinstance(payload, list):
            stack.extend((p, depth + 1) for p in payload if isinstance(p, Message))


def clean(value: object, limit: int = MAX_FIELD_CHARS) -> str:
    """A header or field value as one line of text, bounded (folding and control
    characters gone: it ends up in an event, a log line and a metric-free reason)."""
    text = str(value) if value is not None else ""
    text = "".join(c if c.isprintable() else " " for c in text)
    return _SPACES.sub(" ", text).strip()[:limit]


def address_of(field: str | None) -> str | None:
    """The address of a DSN/ARF address field ("rfc822; ann@example.com", "<a@b>")."""
    if not field:
        return None
    text = clean(field, 400)
    if ";" in text:
        kind, _, text = text.partition(";")
        if kind.strip().lower() not in ("rfc822", "utf-8", ""):
            return None
    text = text.strip().strip("<>").strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or " " in text or len(text) > 320:
        return None
    return text


def text_of(part: Message) -> str:
    """The decoded text of a text part, bounded; '' when it cannot be decoded."""
    try:
        raw = part.get_payload(decode=True)
    except (ValueError, TypeError, LookupError):
        return ""
    if not isinstance(raw, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return raw[: MAX_TEXT_CHARS * 4].decode(charset, "replace")[:MAX_TEXT_CHARS]
    except (LookupError, ValueError):
        return raw[: MAX_TEXT_CHARS * 4].decode("utf-8", "replace")[:MAX_TEXT_CHARS]


def original_headers(msg: Message) -> Message | None:
    """The headers of the message a report is about: its message/rfc822 part, or a
    text/rfc822-headers part (RFC 6522), or None when the report quotes nothing."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers", "text/global-headers"):
            head = text_of(part) if part.get("content-transfer-encoding") else part.get_payload()
            if isinstance(head, str):
                return email.parser.HeaderParser(policy=email.policy.compat32).parsestr(head)
    return None


def first_code(text: str) -> tuple[int | None, str | None]:
    """The first SMTP reply code and RFC 3463 enhanced code in a text, if any."""
    code = REPLY_CODE.search(text)
    enhanced = ENHANCED.search(text)
    return (
        int(code.group(1)) if code else None,
        ".".join(enhanced.groups()) if enhanced else None,
    )
