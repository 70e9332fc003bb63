"""SMTP replies -> dispositions: the one place that decides what a reply means.

RFC 5321 reply codes give the class (2xx, 4xx, 5xx); RFC 3463 enhanced status
codes ("5.1.1") say why. Together they decide delivered / deferred / bounced
(as `wire.Disposition`, the one enum of dispositions), whether a bounce is
hard or a policy refusal, and the `reason` of the event. What a deferral
then becomes (a retry or an expiry) is decided by `settlement`.

Only protocol facts are code here: what a reply code and its RFC 3463
subject mean, and what the SMTP stage that gave it (`ports.Stage`) changes:

- a 5.7.x refusal at RCPT concerns that recipient (`recipient_refused`),
  unless the rules class it as the client's reputation (a blocklist answered
  at RCPT, as Postfix's reject_rbl_client does);
- a 5xx greeting or EHLO refuses the host, not the mailbox;
- replies the relay made up itself (DNS, TLS, local refusals, a lost
  connection) say nothing about the receiver's view of the IP: they never
  act on the site.

Everything a reply's *words* decide is data, in the bounce rules
(`mailpipe.contracts.bounces`, a pool can extend them): its class (and so
whether it suppresses the address: only a class that means the address is
bad suppresses at once; receivers answer a refused *sender* or a policy at
RCPT too), greylisting, and whether the receiver asks this IP to stop or slow
down for the site - the rule's `action` (`suspend`, `slow`), which the relay
applies pool-wide (`contracts.site_actions`).
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

from mailpipe.contracts.bounces import (
    BounceClass,
    BounceClassifier,
    ReplyAction,
    SuppressionPolicy,
    default_classifier,
)
from mailpipe.contracts.wire import Disposition

from .ports import SMTPReply, Stage

# "4.7.1" / "5.1.10": class.subject.detail, RFC 3463 section 2 (detail up to 3 digits).
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


class ReplyReason(enum.StrEnum):
    """Why a reply decided what it did; the value is the `reason` of the event
    on the wire."""

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
    GREYLISTED = "greylisted"  # 4xx the rules class as greylisting: retry, nothing wrong
    RECIPIENT_REFUSED = "recipient_refused"  # 5.7.x at RCPT: refused, not necessarily the address
    HOST_REFUSED = "host_refused"  # 5xx greeting/EHLO: the server refuses us, not the mailbox
    TLS_FAILED = "tls_failed"  # our TLS policy could not be met: retry, nobody blocked us


class Verdict(NamedTuple):
    disposition: Disposition  # DELIVERED, DEFERRED or BOUNCED: a reply decides no other
    reason: ReplyReason
    suppress: bool = False  # the class suppresses the address at its first bounce
    bounce_class: BounceClass | None = None  # what it was about (None: delivered)
    suppression: SuppressionPolicy | None = None  # when the class suppresses (None: never)
    # What the receiver's words ask of this egress IP for the site (the rule's
    # action); None: nothing, and always for a reply the relay made up.
    action: ReplyAction | None = None

    @property
    def backoff(self) -> bool:
        """The receiver asked this egress IP to stop or slow down for the site."""
        return self.action is not None


def enhanced_code(text: str) -> str | None:
    """The RFC 3463 code at the start of a reply text, if any."""
    match = _ENHANCED.match(text)
    return ".".join(match.groups()) if match else None


def reply(code: int, text: str) -> SMTPReply:
    """An SMTPReply with its enhanced code parsed out of the text."""
    return SMTPReply(code, text, enhanced_code(text))


# Subject codes (RFC 3463 section 3) that mean "this address is bad".
_HARD_SUBJECTS = frozenset(
    {
        "1.1",  # bad destination mailbox address
        "1.2",  # bad destination system address
        "1.3",  # bad destination mailbox address syntax
        "1.6",  # destination mailbox has moved
        "1.10",  # recipient address has null MX (RFC 7505)
        "2.1",  # mailbox disabled
    }
)
# Basic codes that mean "no such mailbox" when the reply carries no enhanced code
# (RFC 5321 4.2.3: 550 mailbox unavailable, 551 user not local, 553 name not allowed).
_HARD_BASIC_CODES = (550, 551, 553)

_DEFERRED = Disposition.DEFERRED
_BOUNCED = Disposition.BOUNCED

# Stages where a refusal concerns the recipient it answered, not the sender's IP.
_RECIPIENT_STAGES = frozenset({Stage.RCPT})
# Stages where a 5xx refuses this client altogether: the mailbox was never judged.
_HOST_STAGES = frozenset({Stage.GREETING, Stage.EHLO})
# Stages whose replies the relay synthesized itself: no word from the receiver.
_SYNTHESIZED_STAGES = frozenset({Stage.DNS, Stage.LOCAL, Stage.LOST, Stage.TLS})


def classify(
    r: SMTPReply, stage: str | None = None, classifier: BounceClassifier | None = None
) -> Verdict:
    """Decide the disposition of one recipient from the reply it got and the
    SMTP stage that gave it (None: unknown, judged by the code alone), and
    class it with `classifier` (the pool's rules; default: the packaged ones)."""
    verdict = _by_code(r)
    if verdict.disposition is Disposition.DELIVERED:
        return verdict
    found = (classifier or default_classifier()).classify(
        r.code, r.enhanced or enhanced_code(r.text), r.text, stage
    )
    policy = found.suppression
    at_once = verdict.disposition is _BOUNCED and policy is not None and policy.after == 1
    made_up = stage in _SYNTHESIZED_STAGES  # the receiver said nothing: no site action
    return Verdict(
        verdict.disposition,
        _by_stage(verdict, stage, found.bounce_class),
        suppress=at_once,
        bounce_class=found.bounce_class,
        suppression=policy,
        action=None if made_up or found.rule is None else found.rule.action,
    )


def _by_stage(verdict: Verdict, stage: str | None, bounce_class: BounceClass) -> ReplyReason:
    """The reason of the code adjusted by the stage (and by the class where the
    rules recognised greylisting or the client's reputation)."""
    if stage == Stage.TLS:
        return ReplyReason.TLS_FAILED
    if verdict.disposition is _DEFERRED and bounce_class is BounceClass.GREYLISTED:
        return ReplyReason.GREYLISTED
    if stage in _HOST_STAGES and verdict.disposition is _BOUNCED:
        return ReplyReason.HOST_REFUSED
    if (
        stage in _RECIPIENT_STAGES
        and verdict.reason is ReplyReason.POLICY_BLOCK
        and bounce_class is not BounceClass.REPUTATION
    ):
        return ReplyReason.RECIPIENT_REFUSED
    return verdict.reason


def _by_code(r: SMTPReply) -> Verdict:
    """The verdict of the reply code and its enhanced status code alone."""
    enhanced = r.enhanced or enhanced_code(r.text)
    subject = ".".join(enhanced.split(".")[1:]) if enhanced else ""
    if 200 <= r.code < 300:
        return Verdict(Disposition.DELIVERED, ReplyReason.ACCEPTED)
    if 400 <= r.code < 500:
        if r.code == 421:
            return Verdict(_DEFERRED, ReplyReason.SERVICE_UNAVAILABLE)
        if subject.startswith("7."):
            return Verdict(_DEFERRED, ReplyReason.RATE_LIMITED)
        if subject.startswith("4."):
            return Verdict(_DEFERRED, ReplyReason.NETWORK_OR_ROUTING)
        if subject.startswith("2."):
            return Verdict(_DEFERRED, ReplyReason.MAILBOX_BUSY_OR_FULL)
        return Verdict(_DEFERRED, ReplyReason.TEMPORARY_FAILURE)
    if 500 <= r.code < 600:
        if subject in _HARD_SUBJECTS or (not enhanced and r.code in _HARD_BASIC_CODES):
            return Verdict(_BOUNCED, ReplyReason.MAILBOX_UNKNOWN, suppress=True)
        if subject.startswith("7."):
            return Verdict(_BOUNCED, ReplyReason.POLICY_BLOCK)
        if subject.startswith("2.") or subject.startswith("3."):
            return Verdict(_BOUNCED, ReplyReason.MAILBOX_OR_SYSTEM_FULL)
        return Verdict(_BOUNCED, ReplyReason.PERMANENT_FAILURE)
    # Anything else is a protocol violation by the peer: try again later.
    return Verdict(_DEFERRED, ReplyReason.INVALID_REPLY)
