"""What a message carries so that what comes back finds it (issue 20).

With a pool's feedback settings (`RelayConfig.feedback`), each record is sent

- with MAIL FROM `b-<token>@<bounce domain>` (VERP): an asynchronous bounce
  goes to that address, and the feedback receiver knows from the signed token
  alone which pool, campaign, variant, message and recipient it is about,
  even when the report quotes nothing else;
- with `X-Mailpipe-Trace: <token>`, a second route: complaint reports quote
  the original's headers, often without its Return-Path;
- with `Feedback-ID: <campaign>:<pool>:<namespace>:mailpipe`, the header
  Gmail's Postmaster Tools feedback loop aggregates complaint rates by (its
  format: identifiers, most specific first, then the sender's own id).

The token names the record's one recipient; a record with several (all of
one domain, one transaction) names `@<domain>`, and the receiver takes the
report's recipients of that domain. Without feedback settings nothing
changes: MAIL FROM is the record's sender. Pure but for reading the key
Secret once, when the config is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailpipe.contracts.config import FeedbackSettings
from mailpipe.contracts.feedback_token import (
    Purpose,
    TokenKeys,
    TokenPayload,
    keys_from_directory,
    return_path,
    sign,
)
from mailpipe.contracts.wire import DeliveryRecord

TRACE_HEADER = "X-Mailpipe-Trace"
FEEDBACK_ID_HEADER = "Feedback-ID"
SENDER_ID = "mailpipe"  # Feedback-ID's last field: who sends, constant per platform
NO_CAMPAIGN = "direct"  # Feedback-ID's campaign field for a record of no campaign


@dataclass(frozen=True)
class Stamp:
    return_path: str  # the envelope sender (MAIL FROM)
    headers: tuple[tuple[str, str], ...]  # added to the message


class Stamper:
    """Signs each record's tokens with the pool's current feedback key."""

    def __init__(
        self, settings: FeedbackSettings, pool: str, keys: TokenKeys | None = None
    ) -> None:
        self.settings = settings
        self.namespace, _, self.pool = pool.partition("/")
        # Read once per config: a missing Secret fails the reload, not a message.
        self.keys = keys or keys_from_directory(settings.keys_path)

    def stamp(self, record: DeliveryRecord, now: float) -> Stamp:
        campaign = record.campaign.partition("/")[2] if record.campaign else None
        if len(record.recipients) == 1:
            recipient = record.recipients[0].address
        else:
            recipient = f"@{record.domain}"
        payload = TokenPayload(
            namespace=self.namespace,
            pool=self.pool,
            recipient=recipient,
            message_id=record.id,
            campaign=campaign or None,
            variant=record.variant,
            issued_at=int(now),
        )
        bounce = sign(payload, Purpose.BOUNCE, self.keys)
        trace = sign(payload, Purpose.TRACE, self.keys)
        feedback_id = f"{campaign or NO_CAMPAIGN}:{self.pool}:{self.namespace}:{SENDER_ID}"
        return Stamp(
            return_path(bounce, self.settings.bounce_domain),
            ((TRACE_HEADER, trace), (FEEDBACK_ID_HEADER, feedback_id)),
        )
