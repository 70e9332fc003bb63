"""Settlement: what one attempt of a record means, as a value. Pure: no IO, no clock.

The single answer to where a 4xx becomes a retry (ARCHITECTURE.md, "Where to look"):

    reply per recipient -> classify -> DELIVERED | BOUNCED | DEFERRED, and a bounce class
      BOUNCED, class suppresses at once   -> also a suppression of the address
      BOUNCED, class suppresses after N   -> a strike; the Nth within the window suppresses
      DEFERRED, next attempt
        still within max age  -> the recipient joins the retry record
                                 (attempt + 1, due now + the retry schedule's delay)
        past max age          -> EXPIRED instead
      reply's rule has an action -> the site is suspended or slowed for the egress IP

The engine applies a `Settlement` (emission produces it; scheduling applies the
site actions, pool-wide; the warm-up ledger counts the dispositions); `test_settlement`
drives this table without a broker, a transport or time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from mailpipe.contracts.bounces import BounceClassifier, ReplyAction
from mailpipe.contracts.config import RetrySettings
from mailpipe.contracts.strikes import StrikeLedger
from mailpipe.contracts.tls_outcome import TLSOutcome
from mailpipe.contracts.wire import (
    DeliveryRecord,
    Disposition,
    Event,
    Recipient,
    Suppression,
    SuppressionReason,
    suppression_key,
)

from .classify import Verdict, classify, reply
from .ports import TransactionResult

MAX_REPLY_CHARS = 2000  # Event.reply's bound: a receiver's essay must not bloat the topic
MAX_SUPPRESSION_DETAIL_CHARS = 500
CAMPAIGN_CANCELLED = "campaign_cancelled"
# A recipient the transport returned no reply for (it never should): deferred, so
# it is tried again rather than assumed delivered or lost.
NO_REPLY = reply(451, "4.3.0 no reply for recipient")


class Transaction(NamedTuple):
    """Recipients of one SMTP transaction and what the transport answered."""

    recipients: Sequence[Recipient]
    result: TransactionResult


class AskedAction(NamedTuple):
    """A reply whose rule asks the egress IP to stop or slow down for the site."""

    action: ReplyAction
    reply: str  # the reply as the receiver said it ("421 4.7.28 ..."): what the status quotes
    bounce_class: str | None


class Settlement(NamedTuple):
    events: tuple[Event, ...] = ()
    suppressions: tuple[Suppression, ...] = ()
    retry: DeliveryRecord | None = None  # deferred recipients; `not_before` is the due time
    actions: tuple[AskedAction, ...] = ()  # one per reply whose rule has a site action


def event(
    record: DeliveryRecord,
    recipient: str,
    disposition: Disposition,
    now: float,
    relay_id: str,
    *,
    ip: str | None = None,
    mx: str | None = None,
    code: int | None = None,
    enhanced: str | None = None,
    text: str | None = None,
    reason: str | None = None,
    bounce_class: str | None = None,
    tls: TLSOutcome | None = None,
    site: str | None = None,
) -> Event:
    """The disposition event of one recipient of `record`'s current attempt."""
    return Event(
        message_id=record.id,
        campaign=record.campaign,
        variant=record.variant,
        recipient=recipient,
        domain=record.domain,
        disposition=disposition,
        time=now,
        attempt=record.attempt + 1,
        egress_ip=ip,
        mx_host=mx,
        smtp_code=code,
        enhanced_code=enhanced,
        reply=text[:MAX_REPLY_CHARS] if text else None,
        reason=str(reason) if reason is not None else None,
        bounce_class=bounce_class,
        relay=relay_id,
        tls=tls,
        site=site,
    )


def cancelled(record: DeliveryRecord, now: float, relay_id: str) -> Settlement:
    """A record of a deleted campaign: every recipient FAILED, nothing sent."""
    return Settlement(
        events=tuple(
            event(record, r.address, Disposition.FAILED, now, relay_id, reason=CAMPAIGN_CANCELLED)
            for r in record.recipients
        )
    )


def settle(
    record: DeliveryRecord,
    transactions: Sequence[Transaction],
    *,
    egress_ip: str,
    now: float,
    retry: RetrySettings,
    relay_id: str,
    pool: str,
    classifier: BounceClassifier | None = None,
    strikes: StrikeLedger | None = None,
    site: str | None = None,
) -> Settlement:
    """Events, suppressions, the retry record and site actions of one attempt.
    `site`: what the attempt was shaped under, in its events for the warm-up
    ledgers that replay them;
    `classifier`: the pool's bounce rules (default: the packaged ones);
    `strikes`: the bounces counted toward a class's threshold so far (default:
    none, so only classes that suppress at once suppress)."""
    ledger = strikes if strikes is not None else StrikeLedger()
    events: list[Event] = []
    suppressions: list[Suppression] = []
    actions: list[AskedAction] = []
    deferred: list[Recipient] = []
    next_delay = retry.delay_for(record.attempt + 1)
    expires = record.created_at + retry.max_age_seconds
    for tx in transactions:
        for rcpt in tx.recipients:
            r = tx.result.replies.get(rcpt.address) or NO_REPLY
            verdict = classify(r, tx.result.detail.get(rcpt.address), classifier)
            if verdict.action is not None:
                actions.append(
                    AskedAction(verdict.action, f"{r.code} {r.text}", verdict.bounce_class)
                )
            disposition = verdict.disposition
            if disposition is Disposition.BOUNCED:
                why = _suppresses(verdict, rcpt.address, ledger, now)
                if why is not None:
                    suppressions.append(
                        Suppression(
                            address=suppression_key(rcpt.address),
                            reason=SuppressionReason.HARD_BOUNCE,
                            time=now,
                            source=pool,
                            detail=f"{why}: {r.text}"[:MAX_SUPPRESSION_DETAIL_CHARS],
                        )
                    )
            elif disposition is Disposition.DEFERRED:
                if now + next_delay > expires:
                    disposition = Disposition.EXPIRED
                else:
                    deferred.append(rcpt)
            events.append(
                event(
                    record,
                    rcpt.address,
                    disposition,
                    now,
                    relay_id,
                    ip=egress_ip,
                    mx=tx.result.mx_host,
                    code=r.code,
                    enhanced=r.enhanced,
                    text=r.text,
                    reason=verdict.reason,
                    bounce_class=verdict.bounce_class,
                    tls=tx.result.tls,
                    site=site,
                )
            )
    retry_record = None
    if deferred:
        retry_record = record.model_copy(
            update={
                "recipients": deferred,
                "attempt": record.attempt + 1,
                "not_before": now + next_delay,
            }
        )
    return Settlement(tuple(events), tuple(suppressions), retry_record, tuple(actions))


def _suppresses(verdict: Verdict, address: str, ledger: StrikeLedger, now: float) -> str | None:
    """Why this bounce suppresses the address (its class, and how often within
    how long when the class has a threshold), or None."""
    policy = verdict.suppression
    if verdict.bounce_class is None or policy is None:
        return None  # the class never suppresses
    if verdict.suppress:
        return str(verdict.bounce_class)
    count = ledger.strike(address, verdict.bounce_class, policy, now)
    if count < policy.after:
        return None
    return f"{verdict.bounce_class} {count} times within {policy.within_days} days"


def chunks(recipients: Sequence[Recipient], size: int) -> list[Sequence[Recipient]]:
    """Recipients in transactions of at most `size` (the destination's
    `recipients_per_transaction`), in order."""
    if len(recipients) <= size:
        return [recipients]  # the common case, without a copy
    return [recipients[i : i + size] for i in range(0, len(recipients), size)]
