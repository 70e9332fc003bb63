"""The unsubscribe targets of one message: the pool's one-click URL and, when the
pool has a feedback receiver, a mailto at its bounce domain; each with a signed token.

A campaign that has no unsubscribe URL of its own gets the pool's endpoint
(mailpipe.inbound.unsubscribe). The token is signed here, at send time, for
the one recipient of the message: it names the namespace, pool, campaign,
variant, message id and the list an unsubscribe suppresses, and its issue
time is when the message left (a record may wait days in a send window, and
a token's validity counts from the mail the recipient got). The key comes
from the pool's feedback key Secret, read once per config (like the DKIM key).

RFC 2369 lets List-Unsubscribe name several ways; mail clients without
RFC 8058 one-click (and providers' own unsubscribe buttons, for some senders)
use a mailto. With the pool's feedback settings the message also names
`u-<token>@<bounce domain>`: the feedback receiver is that domain's MX and
unsubscribes the token's recipient when a person writes to it. That token is
signed with the feedback receiver's keys (its Secret may differ from the
endpoint's), with the same payload as the URL's.
"""

from __future__ import annotations

from typing import NamedTuple

from mailpipe.contracts.config import FeedbackSettings, UnsubscribeSettings
from mailpipe.contracts.feedback_token import (
    UNSUBSCRIBE_PREFIX,
    Purpose,
    TokenKeys,
    TokenPayload,
    keys_from_directory,
    return_path,
    sign,
)
from mailpipe.contracts.wire import DeliveryRecord


class Targets(NamedTuple):
    url: str  # the one-click endpoint's URL with its token
    mailto: str | None  # `u-<token>@<bounce domain>`, or None without a feedback receiver


class UnsubscribeLinks:
    def __init__(
        self,
        settings: UnsubscribeSettings,
        pool: str,
        feedback: FeedbackSettings | None = None,
        feedback_keys: TokenKeys | None = None,
    ) -> None:
        """`feedback`: the pool's feedback receiver, whose bounce domain takes the
        mailto (its keys: `feedback_keys`, else read from its Secret)."""
        self.base_url = settings.base_url
        self._keys = keys_from_directory(settings.keys_dir)
        self._namespace, _, self._pool = pool.partition("/")
        self._mailto_domain = feedback.bounce_domain if feedback is not None else None
        self._mailto_keys = None
        if feedback is not None:
            self._mailto_keys = feedback_keys or keys_from_directory(feedback.keys_path)

    def targets(self, record: DeliveryRecord, now: float) -> Targets:
        """The URL (and mailto) for `record`'s one recipient (ValueError for several:
        a token names one)."""
        if len(record.recipients) != 1:
            raise ValueError(
                f"the pool's unsubscribe endpoint signs a URL per recipient; this record has"
                f" {len(record.recipients)}"
            )
        campaign = record.campaign.partition("/")[2] if record.campaign else None
        unsub = record.list_unsubscribe
        payload = TokenPayload(
            namespace=self._namespace,
            pool=self._pool,
            recipient=record.recipients[0].address,
            message_id=record.id,
            campaign=campaign or None,
            variant=record.variant,
            issued_at=int(now),
            mailing_list=unsub.list if unsub is not None else None,
        )
        token = sign(payload, Purpose.UNSUBSCRIBE, self._keys)
        mailto = None
        if self._mailto_domain is not None and self._mailto_keys is not None:
            signed = (
                token
                if self._mailto_keys == self._keys
                else sign(payload, Purpose.UNSUBSCRIBE, self._mailto_keys)
            )
            mailto = return_path(signed, self._mailto_domain, UNSUBSCRIBE_PREFIX)
        return Targets(self.base_url + token, mailto)
