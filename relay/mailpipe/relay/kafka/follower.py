"""The relay's followed topics: what it must know before it may send.

Suppressions (ARCHITECTURE.md, "Suppressed is never sent"), the warm-up ledger
rebuilt from the pool's events (ARCHITECTURE.md, "Limits hold pool-wide") and
campaign states (paused, cancelled) are each replayed to the end of their
topic before the consumer joins its group, then kept current (relay main
waits on `wait_caught_up`). Reading a topic is
`mailpipe.kafkakit.TopicFollower`; this module is what the relay does with
each record: decode, tolerate bad ones, apply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from mailpipe.contracts.config import KafkaSettings
from mailpipe.contracts.site_actions import SiteAction, SiteActions
from mailpipe.contracts.suppressions import CampaignStates, SuppressionList, apply_suppression
from mailpipe.contracts.warmup import WarmupLedger, decode_events_value
from mailpipe.contracts.wire import WireError, decode_control
from mailpipe.kafkakit import TopicFollower
from mailpipe.kafkakit.follower import Apply

from ..metrics import RelayMetrics
from ..scheduling import log_action

log = logging.getLogger("mailpipe.relay")


def apply_event(
    ledger: WarmupLedger,
    relay_id: str,
    bad: Callable[[], None],
    actions: SiteActions | None = None,
) -> Apply:
    """Apply a value of the pool's events topic: events (and un-pauses, usage
    reports) to the warm-up ledger, site actions of any relay to `actions` -
    so a suspension holds on every relay of the pool, and a relay that starts
    knows the active ones before it joins the group."""
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
            event = decode_events_value(value)  # an event, or an IP's un-pause
        except WireError:
            bad()
            return
        if isinstance(event, SiteAction):
            if actions is not None and actions.apply(event) and live:
                log_action(event, f" (from {event.relay})")
            return
        ledger.observe(event, replaying=not live)

    return apply


def apply_control(campaigns: CampaignStates, bad: Callable[[], None]) -> Apply:
    def apply(key: bytes | None, value: bytes | None, live: bool) -> None:
        if key is None:
            return
        if value is None:  # tombstone: the campaign's control record was removed
            campaigns.set(key.decode(), "active")
            return
        try:
            control = decode_control(value)
        except WireError as exc:
            bad()
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
    metrics: RelayMetrics,
    actions: SiteActions | None = None,
) -> list[TopicFollower]:
    """The followers, not started (start them, then await every
    `wait_caught_up` before the consumer joins the group): the pool's
    suppressions, events and its namespace's campaign control, and each obeyed
    suppression topic (never-mail list; a routed pool's namespace list).
    Undecodable records are counted in `mailpipe_followed_bad_records_total{topic}`."""
    bootstrap = settings.connection  # the relay's login too

    def counter(topic: str) -> Callable[[], None]:
        return metrics.followed_bad.labels(topic).inc

    return [
        TopicFollower(
            bootstrap,
            settings.suppressions_topic,
            apply_suppression(suppressions, counter(settings.suppressions_topic)),
        ),
        TopicFollower(
            bootstrap,
            settings.events_topic,
            apply_event(ledger, relay_id, counter(settings.events_topic), actions),
        ),
        TopicFollower(
            bootstrap,
            settings.control_topic,
            apply_control(campaigns, counter(settings.control_topic)),
        ),
        *(
            TopicFollower(bootstrap, topic, apply_suppression(suppressions, counter(topic), topic))
            for topic in settings.obeyed_suppressions_topics
            if topic != settings.suppressions_topic
        ),
    ]
