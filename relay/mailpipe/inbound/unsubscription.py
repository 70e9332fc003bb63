"""What an unsubscribe writes, however it came: the one-click POST
(`unsubscribe`) or a mail to the List-Unsubscribe mailto (`feedback`).

Both write the same two records from the same signed token: the suppression
(the token's recipient, scoped to the token's list or the namespace) and the
`unsubscribed` event the campaign counts. Only the word for how it came
differs (`FeedbackReason.ONE_CLICK` or `MAILTO`: the event's reason and the
suppression's detail), so `kubectl mailpipe fate` can tell them apart while
`suppressions list --source unsubscribe` finds both. One builder, so the two
ways cannot drift. Pure.
"""

from __future__ import annotations

from mailpipe.contracts.feedback_token import TokenPayload
from mailpipe.contracts.wire import (
    Disposition,
    Event,
    FeedbackReason,
    Suppression,
    SuppressionReason,
    domain_of,
)

SOURCE_PREFIX = "unsubscribe:"  # a suppression's source: `unsubscribe:<campaign or pool>`


def suppression(payload: TokenPayload, now: float, how: FeedbackReason) -> Suppression:
    """The suppression an unsubscribe writes, keyed `suppression_key(address, list)`
    on the topic (a list's entry never overwrites the namespace's)."""
    assert how.is_unsubscribe
    return Suppression(
        address=payload.recipient,
        reason=SuppressionReason.UNSUBSCRIBE,
        time=now,
        source=f"{SOURCE_PREFIX}{payload.campaign or payload.pool}",
        detail=how.value,
        list=payload.mailing_list,
    )


def event(
    payload: TokenPayload, now: float, how: FeedbackReason, relay: str | None = None
) -> Event:
    """The `unsubscribed` event the campaign counts (`relay`: the writer's id, if any)."""
    assert how.is_unsubscribe
    return Event(
        message_id=payload.message_id,
        campaign=f"{payload.namespace}/{payload.campaign}" if payload.campaign else None,
        variant=payload.variant,
        recipient=payload.recipient,
        domain=domain_of(payload.recipient),
        disposition=Disposition.UNSUBSCRIBED,
        time=now,
        reason=how.value,
        relay=relay,
    )
