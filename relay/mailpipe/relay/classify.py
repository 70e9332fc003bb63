"""SMTP replies -> dispositions: the one place that decides what a reply means.

RFC 5321 reply codes give the class (2xx, 4xx, 5xx); RFC 3463 enhanced status
codes ("5.1.1") say why. Together they decide delivered / deferred / bounced
(as `wire.Disposition`, the one enum of dispositions), whether a bounce is
hard (the mailbox is gone: suppress it) or a policy refusal (the sender is
blocked: slow down that IP, don't blame the address), and whether the
receiver is asking this IP to back off (421, 4.7.x). What a deferral then
becomes (a retry or an expiry) is decided by `settlement`.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

from mailpipe.contracts.wire import Disposition

from .ports import SMTPReply

# "4.7.1" / "5.1.10": class.subject.detail, RFC 3463 section 2 (detail up to 3 digits).
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


class ReplyReason(enum.StrEnum):
    """Why a reply decided what it did; the value is the `reason` of the event
    on the wire and the label of `mailpipe_backoffs_total`."""

    ACCEPTED = "accepted"
    SERVICE_UNAVAILABLE = "service_unavailable"  # 421
    RATE_LIMITED = "rate_limited"  # 4.7.x
    NETWORK_OR_ROUTING = "network_or_routing"  # 4.4.x
    MAILBOX_BUSY_OR_FULL = "mailbox_busy_or_full"  # 4.2.x
    TEMPORARY_FAILURE = "temporary_failure"  # any other 4xx
    MAILBOX_UNKNOWN = "mailbox_unknown"  # 5.1.x and friends: a hard bounce
    POLICY_BLOCK = "policy_block"  # 5.7.x: the sender is refused, not the address
    MAILBOX_OR_SYSTEM_FULL = "mailbox_or_system_full"  # 5.2.x, 5.3.x
    PERMANENT_FAILURE = "permanent_failure"  # any other 5xx
    INVALID_REPLY = "invalid_reply"  # not 2xx-5xx: a protocol violation by the peer


class Verdict(NamedTuple):
    disposition: Disposition  # DELIVERED, DEFERRED or BOUNCED: a reply decides no other
    reason: ReplyReason
    suppress: bool = False  # hard bounce: the address must never be tried again
    backoff: bool = False  # the receiver wants this egress IP to slow down


def enhanced_code(text: str) -> str | None:
    """The RFC 3463 code at the start of a reply text, if any."""
    match = _ENHANCED.match(text)
    return ".".join(match.groups()) if match else None


def reply(code: int, text: str) -> SMTPReply:
    """An SMTPReply with its enhanced code parsed out of the text."""
    return SMTPReply(code, text, enhanced_code(text))


# Subject codes (RFC 3463 section 3) that mean "this address is bad".
_HARD_SUBJECTS = {
    "1.1",  # bad destination mailbox address
    "1.2",  # bad destination system address
    "1.3",  # bad destination mailbox address syntax
    "1.6",  # destination mailbox has moved
    "1.10",  # recipient address has null MX (RFC 7505)
    "2.1",  # mailbox disabled
}
# Basic codes that mean "no such mailbox" when the reply carries no enhanced code
# (RFC 5321 4.2.3: 550 mailbox unavailable, 551 user not local, 553 name not allowed).
_HARD_BASIC_CODES = (550, 551, 553)

_DEFERRED = Disposition.DEFERRED
_BOUNCED = Disposition.BOUNCED


def classify(r: SMTPReply) -> Verdict:
    """Decide the disposition of one recipient from the reply it got."""
    enhanced = r.enhanced or enhanced_code(r.text)
    subject = ".".join(enhanced.split(".")[1:]) if enhanced else ""
    if 200 <= r.code < 300:
        return Verdict(Disposition.DELIVERED, ReplyReason.ACCEPTED)
    if 400 <= r.code < 500:
        if r.code == 421:
            return Verdict(_DEFERRED, ReplyReason.SERVICE_UNAVAILABLE, backoff=True)
        if subject.startswith("7."):
            return Verdict(_DEFERRED, ReplyReason.RATE_LIMITED, backoff=True)
        if subject.startswith("4."):
            return Verdict(_DEFERRED, ReplyReason.NETWORK_OR_ROUTING)
        if subject.startswith("2."):
            return Verdict(_DEFERRED, ReplyReason.MAILBOX_BUSY_OR_FULL)
        return Verdict(_DEFERRED, ReplyReason.TEMPORARY_FAILURE)
    if 500 <= r.code < 600:
        if subject in _HARD_SUBJECTS or (not enhanced and r.code in _HARD_BASIC_CODES):
            return Verdict(_BOUNCED, ReplyReason.MAILBOX_UNKNOWN, suppress=True)
        if subject.startswith("7."):
            return Verdict(_BOUNCED, ReplyReason.POLICY_BLOCK, backoff=True)
        if subject.startswith("2.") or subject.startswith("3."):
            return Verdict(_BOUNCED, ReplyReason.MAILBOX_OR_SYSTEM_FULL)
        return Verdict(_BOUNCED, ReplyReason.PERMANENT_FAILURE)
    # Anything else is a protocol violation by the peer: try again later.
    return Verdict(_DEFERRED, ReplyReason.INVALID_REPLY)
