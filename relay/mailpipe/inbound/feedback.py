"""What a returned message means: the decision of the feedback receiver, as a value.

    envelope recipient      -> b-<token>@<bounce domain>: a bounce token, verified
                               u-<token>@<bounce domain>: an unsubscribe token (the
                                 List-Unsubscribe mailto), verified
                               fbl@<bounce domain>: the feedback loop address
    message to u-<token>
      a person's mail            -> UNSUBSCRIBED event + unsubscribe suppression,
                                    as the one-click endpoint writes them
      a report, a bounce (null sender), a mail system's or automatic mail
                                 -> nothing, ever (set aside, or an auto-reply)
    message to b-<token> or the feedback loop address
      ARF, feedback-type abuse   -> COMPLAINED event + complaint suppression
      ARF, other types           -> nothing (read, not counted)
      RFC 3464 DSN, per recipient
        Action failed            -> BOUNCED event with its class; a suppression
                                    when the class suppresses (at once, or its Nth
                                    within the window: the strike ledger)
        Action delayed           -> DEFERRED event with its class
        delivered/relayed/...    -> nothing
      auto-reply / out of office -> nothing, ever (the mailbox is fine)
      free-text bounce           -> as a DSN, from its enhanced code and text
      anything else              -> set aside with a reason (the DLQ)

Attribution is the token's: a report says which campaign and recipient only
through the signed token it carries (the envelope recipient, or the original's
Return-Path or trace header), never through its free text, so a forged
report cannot suppress an address mailpipe never sent to. A token naming one
recipient pins the report to that recipient whatever address the report
names (an alias or forward rewrote it); the token of a record with several
recipients names their one domain (`@example.com`) and takes the report's
recipients of that domain.

Pure: bytes, the verified token and the time in; an `Outcome` out. The
receiver (`feedback_server`) does the IO.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import Message

from mailpipe.contracts.bounces import BounceClass, BounceClassifier
from mailpipe.contracts.feedback_token import (
    Purpose,
    TokenError,
    TokenKeys,
    TokenPayload,
    token_of_address,
    verify,
)
from mailpipe.contracts.strikes import StrikeLedger
from mailpipe.contracts.wire import (
    MAX_REPLY_LENGTH,
    Disposition,
    Event,
    FeedbackReason,
    Suppression,
    SuppressionReason,
    domain_of,
    suppression_key,
)

from . import arf, autoreply, dsn, unsubscription
from .mime import ReportError, clean, load

MAX_DETAIL_CHARS = 500  # of a suppression's detail


class Kind(enum.StrEnum):
    """What a returned message turned out to be: the `kind` metrics label."""

    BOUNCE = "bounce"
    DELAY = "delay"  # a DSN saying delivery is still being tried
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"  # a person's mail to the List-Unsubscribe mailto
    AUTO_REPLY = "auto_reply"
    IGNORED = "ignored"  # read and understood, nothing to count (delivered, not-spam)
    SET_ASIDE = "set_aside"  # not usable: goes to the DLQ with the reason


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    reason: str  # a fixed word (metrics label, DLQ reason's first word)
    detail: str = ""  # for people: the DLQ copy and the log
    events: tuple[Event, ...] = ()
    suppressions: tuple[Suppression, ...] = ()


@dataclass
class Receiver:
    """The decision's context: the pool served, its keys and bounce rules, and the
    strikes of threshold classes seen so far (the only state, kept in memory)."""

    namespace: str
    pool: str
    bounce_domain: str
    keys: TokenKeys
    classifier: BounceClassifier
    validity_seconds: int
    receiver_id: str = "feedback"
    strikes: StrikeLedger = field(default_factory=StrikeLedger)

    def check_token(self, token: str, purpose: Purpose, now: float) -> TokenPayload:
        """The payload of a token for this pool, or TokenError with its reason."""
        payload = verify(
            token,
            purpose,
            self.keys,
            now=now,
            namespace=self.namespace,
            validity_seconds=self.validity_seconds,
        )
        if payload.pool != self.pool:
            raise TokenError(
                "foreign", f"token for pool {payload.pool!r}, this serves {self.pool!r}"
            )
        return payload

    def decide(
        self, data: bytes, token: TokenPayload | None, mail_from: str, now: float
    ) -> Outcome:
        """What `data`, received with the verified envelope `token` (None: at the
        feedback loop address), means. Never raises for any input."""
        try:
            msg = load(data)
            if arf.is_feedback_report(msg):
                return self._complaint(arf.parse_message(msg), token, now)
            if dsn.is_delivery_report(msg):
                report = dsn.parse_message(msg)
            else:
                why = autoreply.auto_reply_reason(msg)
                if why is not None:
                    return Outcome(Kind.AUTO_REPLY, why, "automatic reply: never a bounce")
                if not (mail_from == "" or autoreply.is_from_daemon(msg)):
                    raise ReportError(
                        "not_a_report", "neither a report nor from a mail system (null sender)"
                    )
                report = dsn.parse_nonstandard(msg)
            if token is None:
                token = self._token_of_original(report.original, now)
            if token is None:
                raise ReportError(
                    "unattributed", "a delivery report without a valid token of this pool"
                )
            return self._bounce(report, token, now)
        except ReportError as exc:
            return Outcome(Kind.SET_ASIDE, exc.reason, str(exc))
        except (RecursionError, ValueError, TypeError, LookupError, AttributeError) as exc:
            # The email package on hostile input: a report we cannot read.
            return Outcome(Kind.SET_ASIDE, "malformed", f"{type(exc).__name__}: {str(exc)[:200]}")

    def decide_unsubscribe(
        self, data: bytes, token: TokenPayload, mail_from: str, now: float
    ) -> Outcome:
        """What `data`, received for `u-<token>@<bounce domain>` (the List-Unsubscribe
        mailto; `token` verified for unsubscribing) means: the token's recipient
        unsubscribes, exactly as by the one-click endpoint, when a person sent it.
        A delivery or feedback report, mail from a mail system or with the null
        sender (a bounce *to* this address, whatever it names) and an automatic
        reply never unsubscribe anybody. Who is unsubscribed is the token's
        recipient, never the message's From (forwarding rewrites it). Never raises."""
        try:
            if mail_from == "":
                raise ReportError(
                    "not_an_unsubscribe", "null sender: a bounce or a notice, never an unsubscribe"
                )
            msg = load(data)
            if (
                msg.get_content_type() == "multipart/report"
                or arf.is_feedback_report(msg)
                or dsn.is_delivery_report(msg)
                or autoreply.is_from_daemon(msg)
            ):
                raise ReportError(
                    "not_an_unsubscribe",
                    "a report or a mail system's message, never an unsubscribe",
                )
            why = _automatic(msg)
            if why is not None:
                return Outcome(Kind.AUTO_REPLY, why, "automatic mail: never an unsubscribe")
            if not token.recipient or token.recipient.startswith("@"):
                raise ReportError("unattributed", "the unsubscribe token names no one recipient")
        except ReportError as exc:
            return Outcome(Kind.SET_ASIDE, exc.reason, str(exc))
        except (RecursionError, ValueError, TypeError, LookupError, AttributeError) as exc:
            return Outcome(Kind.SET_ASIDE, "malformed", f"{type(exc).__name__}: {str(exc)[:200]}")
        how = FeedbackReason.MAILTO
        return Outcome(
            Kind.UNSUBSCRIBE,
            how.value,
            "",
            (unsubscription.event(token, now, how, relay=self.receiver_id),),
            (unsubscription.suppression(token, now, how),),
        )

    # -- complaints ------------------------------------------------------------------

    def _complaint(self, fb: arf.Feedback, token: TokenPayload | None, now: float) -> Outcome:
        if token is None:
            token = self._token_of(fb.return_paths, fb.trace_tokens, now)
        if token is None:
            raise ReportError(
                "unattributed", "complaint quotes no valid token of this pool (never sent by it?)"
            )
        if not fb.is_complaint:
            return Outcome(Kind.IGNORED, f"feedback_{fb.feedback_type.value.replace('-', '_')}")
        recipient = _complainant(token, fb)
        if not recipient:
            raise ReportError("unattributed", "complaint names no recipient and its token none")
        event = self._event(
            token,
            recipient,
            Disposition.COMPLAINED,
            now,
            reason=FeedbackReason.COMPLAINT.complaint(fb.feedback_type),
            egress_ip=_source_ip(fb.source_ip),
        )
        suppression = Suppression(
            address=suppression_key(recipient),
            reason=SuppressionReason.COMPLAINT,
            time=now,
            source=self._source(token),
            detail=f"{fb.feedback_type} report from {fb.user_agent or 'unknown agent'}"[
                :MAX_DETAIL_CHARS
            ],
        )
        return Outcome(Kind.COMPLAINT, "complaint", "", (event,), (suppression,))

    # -- bounces ---------------------------------------------------------------------

    def _bounce(self, report: dsn.DSN, token: TokenPayload, now: float) -> Outcome:
        events: list[Event] = []
        suppressions: list[Suppression] = []
        kinds: set[Kind] = set()
        for status, recipient in _attributed(report.recipients, token):
            if status.action is dsn.Action.FAILED:
                disposition, kind = Disposition.BOUNCED, Kind.BOUNCE
            elif status.action is dsn.Action.DELAYED:
                disposition, kind = Disposition.DEFERRED, Kind.DELAY
            else:
                continue  # delivered, relayed, expanded: nothing went wrong
            code = status.smtp_code or _code_of(status.status, failed=kind is Kind.BOUNCE)
            found = self.classifier.classify(code, status.status, status.diagnostic)
            events.append(
                self._event(
                    token,
                    recipient,
                    disposition,
                    now,
                    reason=(
                        FeedbackReason.ASYNC_BOUNCE
                        if kind is Kind.BOUNCE
                        else FeedbackReason.ASYNC_DELAY
                    ),
                    code=code,
                    enhanced=status.status,
                    text=status.diagnostic,
                    bounce_class=found.bounce_class,
                )
            )
            kinds.add(kind)
            if kind is Kind.BOUNCE:
                why = self._suppresses(recipient, found.bounce_class, now)
                if why is not None:
                    suppressions.append(
                        Suppression(
                            address=suppression_key(recipient),
                            reason=SuppressionReason.HARD_BOUNCE,
                            time=now,
                            source=self._source(token),
                            detail=f"{why}: {status.diagnostic}"[:MAX_DETAIL_CHARS],
                        )
                    )
        if not events:
            if not _attributed(report.recipients, token):
                raise ReportError("unattributed", "no recipient of the report is the token's")
            return Outcome(Kind.IGNORED, "delivered", "a success notice (delivered, relayed)")
        kind = Kind.BOUNCE if Kind.BOUNCE in kinds else Kind.DELAY
        return Outcome(kind, kind.value, "", tuple(events), tuple(suppressions))

    def _suppresses(self, address: str, bounce_class: BounceClass, now: float) -> str | None:
        """As the relay decides for its own replies: at once for a class whose policy
        says after 1, at the Nth within the window for a threshold class, never
        for a class without a policy (policy, reputation, rate...)."""
        policy = self.classifier.suppression(bounce_class)
        if policy is None:
            return None
        if policy.after <= 1:
            return str(bounce_class)
        count = self.strikes.strike(address, bounce_class, policy, now)
        if count < policy.after:
            return None
        return f"{bounce_class} {count} times within {policy.within_days} days"

    # -- attribution -----------------------------------------------------------------

    def _token_of_original(self, original: Message | None, now: float) -> TokenPayload | None:
        if not isinstance(original, Message):
            return None
        paths = [str(v).strip().strip("<>") for v in original.get_all("return-path") or []]
        traces = [str(v).strip() for v in original.get_all(arf.TRACE_HEADER) or []]
        return self._token_of(paths, traces, now)

    def _token_of(
        self, return_paths: Sequence[str], traces: Sequence[str], now: float
    ) -> TokenPayload | None:
        """The first token of this pool found in the original's Return-Path (a
        bounce token) or trace header (a trace token)."""
        candidates = [
            (token_of_address(a, self.bounce_domain), Purpose.BOUNCE) for a in return_paths
        ]
        candidates += [(t, Purpose.TRACE) for t in traces]
        for token, purpose in candidates:
            if not token:
                continue
            try:
                return self.check_token(token, purpose, now)
            except TokenError:
                continue
        return None

    def _source(self, token: TokenPayload) -> str:
        return f"{self.receiver_id}:{token.namespace}/{token.pool}"

    def _event(
        self,
        token: TokenPayload,
        recipient: str,
        disposition: Disposition,
        now: float,
        *,
        reason: str,
        code: int | None = None,
        enhanced: str | None = None,
        text: str | None = None,
        bounce_class: str | None = None,
        egress_ip: str | None = None,
    ) -> Event:
        return Event(
            message_id=token.message_id,
            campaign=f"{token.namespace}/{token.campaign}" if token.campaign else None,
            variant=token.variant,
            recipient=recipient,
            domain=domain_of(recipient),
            disposition=disposition,
            time=now,
            smtp_code=code,
            enhanced_code=enhanced,
            reply=text[:MAX_REPLY_LENGTH] if text else None,
            reason=reason,
            bounce_class=bounce_class,
            relay=self.receiver_id,
            egress_ip=egress_ip,
        )


def _source_ip(reported: str | None) -> str | None:
    """The report's `Source-IP` (RFC 5965 3.2: the address the reported message came
    from, one of the pool's egress IPs), canonical, or None. It feeds the relays'
    warm-up safeguard (a warming IP paused on its complaint rate), which counts only
    the pool's own IPs: a wrong or forged value (the report itself is attributed by
    its signed token) counts against no IP of the pool."""
    if not reported:
        return None
    try:
        return str(ipaddress.ip_address(reported.strip().strip("[]")))
    except ValueError:
        return None


def _attributed(
    statuses: Sequence[dsn.RecipientStatus], token: TokenPayload
) -> list[tuple[dsn.RecipientStatus, str]]:
    """Each status with the recipient it is about, as the token allows."""
    if token.recipient.startswith("@"):
        # A token of a record with several recipients names their one domain:
        # the report's recipients of that domain are the record's.
        domain = token.recipient[1:].lower()
        return [
            (s, s.recipient) for s in statuses if s.recipient and domain_of(s.recipient) == domain
        ]
    mine = token.recipient.lower()
    named = [
        s
        for s in statuses
        if s.recipient.lower() == mine or (s.original_recipient or "").lower() == mine
    ]
    # One block naming another address (an alias or forward rewrote it) is
    # still about the one recipient the token was made for.
    chosen = named or (list(statuses[:1]) if len(statuses) == 1 else [])
    return [(s, token.recipient) for s in chosen[:1]]


def _complainant(token: TokenPayload, fb: arf.Feedback) -> str | None:
    """Who complained: the token's recipient; for a token of several recipients
    (`@domain`), the report's Original-Rcpt-To or the original's To, of that domain."""
    if token.recipient and not token.recipient.startswith("@"):
        return token.recipient
    domain = token.recipient[1:].lower()
    for address in (*fb.original_rcpt_to, fb.original_to):
        if address and (not domain or domain_of(address) == domain):
            return address
    return None


# RFC 3834 2: mail a responder must not answer is automatic (Precedence is the
# older convention for list and bulk mail); a person's mail client sets none.
_AUTOMATIC_PRECEDENCE = frozenset({"bulk", "junk", "list"})


def _automatic(msg: Message) -> str | None:
    """Why `msg` was sent by a program rather than a person (a fixed word), or None:
    an auto-reply, any Auto-Submitted other than `no` (RFC 3834 5.1), or bulk mail."""
    why = autoreply.auto_reply_reason(msg)
    if why is not None:
        return why
    auto = clean(msg.get("auto-submitted"), 100).lower()
    if auto and not auto.startswith("no"):
        return "auto_submitted"
    if clean(msg.get("precedence"), 40).lower() in _AUTOMATIC_PRECEDENCE:
        return "precedence"
    return None


def _code_of(status: str | None, *, failed: bool) -> int:
    """A reply code for the classifier when the report gave none: 550 / 450 by
    the enhanced code's class (or the action)."""
    if status is not None and status[:1] in "45":
        return 550 if status[0] == "5" else 450
    return 550 if failed else 450
