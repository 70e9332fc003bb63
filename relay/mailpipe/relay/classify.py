"""SMTP replies -> dispositions: the one place that decides what a reply means.

RFC 5321 reply codes give the class (2xx, 4xx, 5xx); RFC 3463 enhanced status
codes ("5.1.1") say why. Together they decide delivered / deferred / bounced,
whether a bounce is hard (the mailbox is gone: suppress it) or a policy
refusal (the sender is blocked: slow down that IP, don't blame the address),
and whether the receiver is asking this IP to back off (421, 4.7.x).
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

from .ports import SMTPReply

# "4.7.1" / "5.1.10": class.subject.detail, RFC 3463 section 2 (detail up to 3 digits).
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"

    def __repr__(self) -> str:
        return f"Outcome.{self.name}"


class Verdict(NamedTuple):
    outcome: Outcome
    reason: str  # short machine-readable cause, e.g. "mailbox_unknown"
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


def classify(r: SMTPReply) -> Verdict:
    """Decide the disposition of one recipient from the reply it got."""
    enhanced = r.enhanced or enhanced_code(r.text)
    subject = ".".join(enhanced.split(".")[1:]) if enhanced else ""
    if 200 <= r.code < 300:
        return Verdict(Outcome.DELIVERED, "accepted")
    if 400 <= r.code < 500:
        if r.code == 421:
            return Verdict(Outcome.DEFERRED, "service_unavailable", backoff=True)
        if subject.startswith("7."):
            return Verdict(Outcome.DEFERRED, "rate_limited", backoff=True)
        if subject.startswith("4."):
            return Verdict(Outcome.DEFERRED, "network_or_routing")
        if subject.startswith("2."):
            return Verdict(Outcome.DEFERRED, "mailbox_busy_or_full")
        return Verdict(Outcome.DEFERRED, "temporary_failure")
    if 500 <= r.code < 600:
        if subject in _HARD_SUBJECTS or (not enhanced and r.code in (550, 551, 553)):
            return Verdict(Outcome.BOUNCED, "mailbox_unknown", suppress=True)
        if subject.startswith("7."):
            return Verdict(Outcome.BOUNCED, "policy_block", backoff=True)
        if subject.startswith("2.") or subject.startswith("3."):
            return Verdict(Outcome.BOUNCED, "mailbox_or_system_full")
        return Verdict(Outcome.BOUNCED, "permanent_failure")
    # Anything else is a protocol violation by the peer: try again later.
    return Verdict(Outcome.DEFERRED, "invalid_reply")
