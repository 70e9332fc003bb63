"""The one-click unsubscribe URL of one message: the pool's endpoint and a signed token.

A campaign that has no unsubscribe URL of its own gets the pool's endpoint
(mailpipe.inbound.unsubscribe). The token is signed here, at send time, for
the one recipient of the message: it names the namespace, pool, campaign,
variant, message id and the list an unsubscribe suppresses, and its issue
time is when the message left (a record may wait days in a send window, and
a token's validity counts from the mail the recipient got). The key comes
from the pool's feedback key Secret, read once per config (like the DKIM key).
"""

from __future__ import annotations

from mailpipe.contracts.config import UnsubscribeSettings
from mailpipe.contracts.feedback_token import Purpose, TokenPayload, keys_from_directory, sign
from mailpipe.contracts.wire import DeliveryRecord


class UnsubscribeLinks:
    def __init__(self, settings: UnsubscribeSettings, pool: str) -> None:
        self.base_url = settings.base_url
        self._keys = keys_from_directory(settings.keys_dir)
        self._namespace, _, self._pool = pool.partition("/")

    def url(self, record: DeliveryRecord, now: float) -> str:
        """The URL for `record`'s one recipient (ValueError for several: a token names one)."""
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
        return self.base_url + sign(payload, Purpose.UNSUBSCRIBE, self._keys)
