"""Site actions: a reply rule's `suspend` or `slow`, held pool-wide.

A provider that throttles or blocks an egress IP says so in its reply text
(`contracts.bounces`: a rule's `action`). What it says holds for its whole
infrastructure and for that IP, whichever relay of the pool sends next: the
relay that got the reply applies the action at once and writes it as a
`SiteAction` record to the pool's events topic, where every relay of the
pool (and the operator, for the pool's status) reads it. The events topic,
not a topic of its own: every relay already replays it to its end before it
joins the consumer group (the warm-up ledger), so a relay that starts or takes
over a site's partition knows the site's active suspensions before its first
attempt, and the operator already follows it for the status.

A record carries its absolute end (`until`, unix seconds), so replaying the
topic in any order across partitions gives the same table: per site, IP and
kind the record that ends last wins, and a record that has ended does
nothing. Pure: records in, decisions out, time passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .bounces import ActionKind, ReplyAction
from .wire import WIRE_VERSION, UnixSeconds, WireError

SITE_ACTION_KIND: Literal["site_action"] = "site_action"
# Recognises the record without decoding it: an Event's JSON has no `kind` key.
SITE_ACTION_MARKER = b'"kind":"site_action"'
MAX_REPLY_CHARS = 300  # the reply that caused it, as the status shows it: one line


class ActionState(enum.StrEnum):
    """How the status names an action (a past participle: what the site is)."""

    SUSPENDED = "suspended"
    SLOWED = "slowed"


STATE_OF = MappingProxyType(
    {ActionKind.SUSPEND: ActionState.SUSPENDED, ActionKind.SLOW: ActionState.SLOWED}
)


class SiteAction(BaseModel):
    """Value on `<pool>.events`: a site suspended or slowed for one egress IP until `until`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = WIRE_VERSION
    kind: Literal["site_action"] = SITE_ACTION_KIND
    site: str = Field(min_length=1, max_length=253)
    egress_ip: str = Field(min_length=1, max_length=64)
    action: ActionKind
    time: UnixSeconds = Field(description="when the reply came (unix seconds)")
    until: UnixSeconds = Field(description="when the action ends (unix seconds)")
    messages_per_minute: float | None = Field(default=None, gt=0, le=100_000)
    rate_factor: float | None = Field(default=None, gt=0, lt=1)
    reply: str = Field(default="", max_length=MAX_REPLY_CHARS, description="what the site said")
    bounce_class: str | None = Field(default=None, max_length=64)
    relay: str | None = Field(default=None, max_length=200, description="who got the reply")

    @property
    def seconds(self) -> float:
        return self.until - self.time


def encode_site_action(record: SiteAction) -> bytes:
    return record.model_dump_json(exclude_none=True).encode()


def decode_site_action(data: bytes) -> SiteAction:
    try:
        return SiteAction.model_validate_json(data)
    except (ValidationError, ValueError, RecursionError) as exc:
        raise WireError(f"bad {SITE_ACTION_KIND} record: {str(exc)[:200]}") from exc


def one_line(text: str) -> str:
    """A multi-line SMTP reply as one line, cut to what the status shows."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_REPLY_CHARS else flat[: MAX_REPLY_CHARS - 1] + "…"


@dataclass
class SiteActions:
    """The pool's site actions as this reader has seen them, keyed by (site, IP, kind)."""

    _held: dict[tuple[str, str, ActionKind], SiteAction] = field(default_factory=dict)

    def apply(self, record: SiteAction) -> bool:
        """Hold `record` unless one of its site, IP and kind ends later; True if held."""
        self._forget_ended(record.time)
        key = (record.site, record.egress_ip, record.action)
        held = self._held.get(key)
        if held is not None and held.until >= record.until:
            return False
        self._held[key] = record
        return True

    def decide(
        self,
        site: str,
        ip: str,
        action: ReplyAction,
        now: float,
        *,
        reply: str,
        bounce_class: str | None,
        relay: str | None,
    ) -> SiteAction | None:
        """The record a reply asking for `action` makes, or None while an action of
        its kind already holds for the site and IP (a reply to an attempt that was
        under way when it began asks for nothing new). A reply within one duration
        of the last action's end doubles it, up to `max_duration_seconds`."""
        held = self._held.get((site, ip, action.kind))
        if held is not None and held.until > now:
            return None
        seconds = float(action.duration_seconds)
        cap = action.max_duration_seconds
        if cap is not None and held is not None and now < held.until + held.seconds:
            seconds = min(max(seconds, held.seconds * 2), cap)  # refused again right after
        return SiteAction(
            site=site,
            egress_ip=ip,
            action=action.kind,
            time=now,
            until=now + seconds,
            messages_per_minute=action.messages_per_minute,
            rate_factor=action.rate_factor,
            reply=one_line(reply),
            bounce_class=bounce_class,
            relay=relay,
        )

    def holding(self, site: str, ip: str, kind: ActionKind, now: float) -> SiteAction | None:
        held = self._held.get((site, ip, kind))
        return held if held is not None and held.until > now else None

    def suspended(self, site: str, ip: str, now: float) -> bool:
        return self.holding(site, ip, ActionKind.SUSPEND, now) is not None

    def suspension_end(self, site: str, ips: Iterable[str], now: float) -> float | None:
        """The earliest end of the suspensions of `site` for any of `ips` (None: none)."""
        ends = [
            held.until
            for ip in ips
            if (held := self.holding(site, ip, ActionKind.SUSPEND, now)) is not None
        ]
        return min(ends) if ends else None

    def active(self, now: float) -> list[SiteAction]:
        """Every action that holds at `now`, by site, IP and kind. Reads a copy:
        a metrics scrape calls it from its own thread."""
        return sorted(
            (h for h in list(self._held.values()) if h.until > now),
            key=lambda h: (h.site, h.egress_ip, h.action),
        )

    def _forget_ended(self, now: float) -> None:
        # An action that ended more than one duration ago can no longer double a
        # repeat: forgotten, so the table holds only what may still matter.
        for key, held in list(self._held.items()):
            if held.until + held.seconds <= now:
                del self._held[key]
