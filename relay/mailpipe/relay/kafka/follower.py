"""The relay's followed topics: what it must know before it may send.

Suppressions (invariant 6), the warm-up ledger rebuilt from the pool's events
(invariant 4) and campaign states (paused, cancelled) are each replayed to the
end of their topic before the consumer joins its group, then kept current
(relay main waits on `wait_caught_up`). Reading a topic is
`mailpipe.kafkakit.TopicFollower`; this module is what the relay does with
each record: decode, tolerate bad ones, apply.
"""

from __future__ import annotations

import json
import logging

from mailpipe.contracts.config import KafkaSettings
from mailpipe.contracts.warmup import WarmupLedger
from mailpipe.contracts.wire import WireError, decode_control, decode_event, decode_suppression
from mailpipe.kafkakit import TopicFollower
from mailpipe.kafkakit.follower import Apply

from ..suppressions import CampaignStates, SuppressionList

log = logging.getLogger("mailpipe.relay")


def apply_suppression(suppressions: SuppressionList) -> Apply:
    def apply(key: bytes | None, value: bytes | None, live: bool) -> None:
        if key is None:
            return
        if value is None:  # tombstone: the suppression is lifted
            suppressions.lift(key.decode())
            return
        try:
            s = decode_suppression(value)
        except WireError as exc:
            log.warning("ignoring bad suppression %r: %s", key, exc)
            return
        suppressions.add(s.address, s.reason.value)

    return apply


def apply_event(ledger: WarmupLedger, relay_id: str) -> Apply:
    # This relay's own live events are skipped before decoding: the ledger
    # counted them when they were sent, and decoding every event this relay
    # produces would only spend CPU to ignore it.
    own_events = f'"relay":{json.dumps(relay_id)}'.encode()

    def apply(key: bytes | None, value: bytes | None, live: bool) -> None:
        if value is None:
            return
        if live and own_events in value:
            return  # counted when sent; the ledger ignores our own live events anyway
        try:
            ledger.observe(decode_event(value), replaying=not live)
        except WireError:
            return

    return apply


def apply_control(campaigns: CampaignStates) -> Apply:
    def apply(key: bytes | None, value: bytes | None, live: bool) -> None:
        if key is None:
            return
        if value is None:  # tombstone: the campaign's control record was removed
            campaigns.set(key.decode(), "active")
            return
        try:
            control = decode_control(value)
        except WireError as exc:
            log.warning("ignoring bad campaign control %r: %s", key, exc)
            return
        campaigns.set(control.campaign, control.state.value)
        if live:
            log.info("campaign %s is %s", control.campaign, control.state.value)

    return apply


def relay_followers(
    settings: KafkaSettings,
    relay_id: str,
    *,
    suppressions: SuppressionList,
    ledger: WarmupLedger,
    campaigns: CampaignStates,
) -> list[TopicFollower]:
    """The three followers, not started (start them, then await every
    `wait_caught_up` before the consumer joins the group)."""
    bootstrap = settings.bootstrap_servers
    return [
        TopicFollower(bootstrap, settings.suppressions_topic, apply_suppression(suppressions)),
        TopicFollower(bootstrap, settings.events_topic, apply_event(ledger, relay_id)),
        TopicFollower(bootstrap, settings.control_topic, apply_control(campaigns)),
    ]
