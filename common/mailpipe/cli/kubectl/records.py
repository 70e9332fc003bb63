"""Pure parts of the kubectl plugin: suppressions and a recipient's fate from Kafka records.

No IO: the plugin reads the compacted suppression topic and a pool's events
topic (`kafka_io`), hands the records to the functions here, and prints what
they return, so every rule is table-tested without a broker.

Suppressions are keyed by the lower-cased address (`wire.suppression_key`),
but a producer that keyed one by its mixed-case spelling leaves a second live
key for the same mailbox. Lifting a suppression therefore tombstones every
live key that names the address, not only the canonical one: a tombstone on
another key would leave the old record to come back at the next relay start.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mailpipe.contracts.wire import (
    Disposition,
    Event,
    Recipient,
    Suppression,
    SuppressionReason,
    WireError,
    decode_suppression,
    encode,
    suppression_key,
)

KafkaRecord = tuple[bytes | None, bytes | None]  # (key, value); None value = tombstone
SOURCE = "kubectl-mailpipe"  # `source` of suppressions added by hand with this plugin
# A deferral is an attempt, not a fate: the relay retries it on the pool's schedule.
FINAL = frozenset(Disposition) - {Disposition.DEFERRED}
UNDECODABLE = "undecodable"  # what the relay records for a value it cannot decode


class UsageError(ValueError):
    """A command-line value the plugin refuses; the message says which and why."""


def checked_address(address: str) -> str:
    """`address` if it is a plain mailbox (the wire's rule), else UsageError."""
    try:
        Recipient(address=address.strip())
    except ValueError as exc:
        raise UsageError(f"{address!r} is not a plain mailbox address") from exc
    return address.strip()


@dataclass(frozen=True)
class Entry:
    """One live suppression: its key on the topic and what its value says."""

    key: str
    address: str
    reason: str
    time: float | None = None
    source: str | None = None
    detail: str | None = None

    def matches(self, address: str) -> bool:
        """Whether this entry suppresses `address` (case-insensitively, by key or value)."""
        wanted = suppression_key(address)
        return wanted in (suppression_key(self.key), suppression_key(self.address))


def live_suppressions(records: Iterable[KafkaRecord]) -> dict[str, Entry]:
    """The suppressions in force after `records` (topic order): key -> entry.

    A tombstone removes its key; an undecodable value still suppresses its
    key, as the relay treats it (ARCHITECTURE.md, "Nothing lost")."""
    live: dict[str, Entry] = {}
    for raw_key, value in records:
        if raw_key is None:
            continue
        key = raw_key.decode("utf-8", "replace")
        if value is None:
            live.pop(key, None)
            continue
        try:
            s = decode_suppression(value)
        except WireError:
            live[key] = Entry(key, key, UNDECODABLE)
            continue
        live[key] = Entry(key, s.address, s.reason.value, s.time, s.source, s.detail)
    return live


def matching(address: str, live: dict[str, Entry]) -> list[Entry]:
    """The live entries that suppress `address`, by key."""
    return sorted((e for e in live.values() if e.matches(address)), key=lambda e: e.key)


def suppression_record(
    address: str, reason: SuppressionReason, detail: str | None, now: float
) -> KafkaRecord:
    """(key, value) that suppresses `address`, keyed as the relays key it."""
    key = suppression_key(checked_address(address))
    value = Suppression(address=key, reason=reason, time=now, source=SOURCE, detail=detail)
    return key.encode(), encode(value)


def tombstones(address: str, live: dict[str, Entry]) -> list[KafkaRecord]:
    """Tombstones lifting every live suppression of `address` (none if it is not suppressed)."""
    return [(e.key.encode(), None) for e in matching(checked_address(address), live)]


@dataclass(frozen=True)
class Fate:
    """What happened to one recipient in one campaign (or one message without a campaign)."""

    campaign: str | None
    attempts: tuple[Event, ...]  # in time order

    @property
    def last(self) -> Event:
        return self.attempts[-1]

    @property
    def final(self) -> bool:
        return self.last.disposition in FINAL

    def summary(self) -> str:
        e = self.last
        state = e.disposition.value if self.final else f"{e.disposition.value}, will be retried"
        return f"{state} at {iso(e.time)} after {len(self.attempts)} attempt(s): {reply_of(e)}"


def fates(events: Iterable[Event], address: str, campaign: str | None = None) -> list[Fate]:
    """The events of `address` (case-insensitively), grouped by campaign (or by
    message when it has none), each group in time order; groups by first time."""
    wanted = suppression_key(address)
    groups: dict[str, list[Event]] = {}
    for e in events:
        if suppression_key(e.recipient) != wanted:
            continue
        if campaign is not None and e.campaign != campaign:
            continue
        groups.setdefault(e.campaign or f"message {e.message_id}", []).append(e)
    out = [
        Fate(evs[0].campaign, tuple(sorted(evs, key=lambda e: (e.time, e.attempt))))
        for evs in groups.values()
    ]
    return sorted(out, key=lambda f: f.attempts[0].time)


def reply_of(e: Event) -> str:
    """The SMTP reply of an event as one line: code, enhanced code, text (or the reason)."""
    parts = [str(e.smtp_code) if e.smtp_code else "", e.enhanced_code or "", e.reply or ""]
    text = " ".join(p for p in parts if p).replace("\r", " ").replace("\n", " ")
    return text or (e.reason or "-")


def iso(t: float | None) -> str:
    """Unix seconds as RFC 3339 UTC to the second ('-' when unknown)."""
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def campaign_key(namespace: str, name: str) -> str:
    """The key events and controls carry for a Campaign: 'namespace/name' (a
    name that already has a namespace is taken as is)."""
    return name if "/" in name else f"{namespace}/{name}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A kubectl-style table: upper-case headers, columns padded with 3 spaces."""
    cells = [list(headers), *([str(c) for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)
