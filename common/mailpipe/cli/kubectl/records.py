"""Pure parts of the kubectl plugin: suppressions and a recipient's fate from Kafka records.

No IO: the plugin reads the compacted suppression topic and a pool's events
topic (`kafka_io`), hands the records to the functions here, and prints what
they return, so every rule is table-tested without a broker.

Suppressions are keyed by the lower-cased address (`wire.suppression_key`),
but a producer that keyed one by its mixed-case spelling leaves a second live
key for the same mailbox. Lifting a suppression therefore tombstones every
live key that names the address, not only the canonical one: a tombstone on
another key would leave the old record to come back at the next relay start.

What came back after a message was sent is on the same events topic as the
relay's attempts: the feedback receiver's `bounced`/`deferred` (asynchronous
DSNs) and `complained` events, and the `unsubscribed` of the one-click
endpoint or of a mail to the List-Unsubscribe mailto (the feedback receiver).
`origin` tells them apart by the word each writer puts in `reason`
(`wire.FeedbackReason`, the writers' and this plugin's one list), so a fate
says which line was an attempt and which came back later, and from where.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mailpipe.contracts.topics import (
    NEVER_MAIL_TOPIC,
    SUPPRESSIONS_SUFFIX,
    Topics,
    namespace_space,
)
from mailpipe.contracts.wire import (
    Disposition,
    Event,
    FeedbackReason,
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
# The reasons `suppressions list --reason` knows: the wire's, and the one the
# relay gives a value it cannot decode (it still suppresses its key).
REASONS = (*(r.value for r in SuppressionReason), UNDECODABLE)

# Who wrote an event, from its `reason` (`FeedbackReason`, the writers' own words):
RELAY_ATTEMPT = "relay attempt"
FEEDBACK_RECEIVER = "feedback receiver"
ONE_CLICK = FeedbackReason.ONE_CLICK.value  # an unsubscribe says how it came
MAILTO = FeedbackReason.MAILTO.value

# What wrote a suppression, from its `source` (the writers' own spellings):
#   relay        "<namespace>/<pool>"                 a bounce at RCPT (relay settlement)
#   feedback     "<receiver id>:<namespace>/<pool>"   an asynchronous bounce or a complaint
#   unsubscribe  "unsubscribe:<campaign or pool>"     the one-click endpoint
#   kubectl      "kubectl-mailpipe"                   `kubectl mailpipe suppress`
SOURCE_KINDS = ("relay", "feedback", "unsubscribe", "kubectl")


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
    mailing_list: str | None = None  # a suppression of this list only

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
        live[key] = Entry(key, s.address, s.reason.value, s.time, s.source, s.detail, s.list)
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


def checked_reason(reason: str) -> str:
    """`reason` if `suppressions list` knows it, else a UsageError naming the valid ones."""
    if reason not in REASONS:
        raise UsageError(f"unknown reason {reason!r}: one of {', '.join(REASONS)}")
    return reason


def source_kind(source: str | None) -> str:
    """Which writer a suppression's `source` names (SOURCE_KINDS), or 'other'."""
    if not source:
        return "other"
    if source == SOURCE:
        return "kubectl"
    if source.startswith("unsubscribe:"):
        return "unsubscribe"
    if ":" in source:
        return "feedback"
    return "relay" if "/" in source else "other"


def selected(entries: Iterable[Entry], reason: str | None, source: str | None) -> list[Entry]:
    """The entries of `reason` (checked) and `source`: a kind (SOURCE_KINDS) or any
    part of the source text (a pool, a receiver id, a campaign), case-insensitively."""
    wanted = checked_reason(reason) if reason is not None else None
    out = []
    for e in entries:
        if wanted is not None and e.reason != wanted:
            continue
        if source is not None and not (
            source == source_kind(e.source) or source.lower() in (e.source or "").lower()
        ):
            continue
        out.append(e)
    return out


def scopes(namespace: str, pools: Iterable[tuple[str, Topics]]) -> dict[str, str]:
    """Suppression topic -> the scope it holds for, in words, for the pools
    (name, topics) of `namespace`: the namespace's topic, a routed pool's own,
    the platform's never-mail list. In topic order: the ones a pool writes first."""
    shared = f"{namespace_space(namespace)}.{SUPPRESSIONS_SUFFIX}"
    out: dict[str, str] = {}
    for name, t in pools:
        for topic in (t.suppressions, *t.obeyed):
            if topic == NEVER_MAIL_TOPIC:
                out.setdefault(topic, "never-mail (every namespace)")
            elif topic == shared:
                out.setdefault(topic, f"namespace {namespace}")
            else:
                out.setdefault(topic, f"pool {name} only")
    return out


@dataclass(frozen=True)
class Held:
    """A suppression in force for an address: the entry, its topic and its scope."""

    entry: Entry
    topic: str
    scope: str

    @property
    def scope_text(self) -> str:
        """The scope, narrowed to the list when it is one list's."""
        if self.entry.mailing_list:
            return f"{self.scope}, list {self.entry.mailing_list}"
        return self.scope


def held(
    address: str, by_topic: Mapping[str, Iterable[KafkaRecord]], scope: Mapping[str, str]
) -> list[Held]:
    """Every suppression in force for `address`, topic by topic (`scope` order)."""
    out: list[Held] = []
    for topic, label in scope.items():
        records = by_topic.get(topic)
        if records is None:
            continue
        out.extend(Held(e, topic, label) for e in matching(address, live_suppressions(records)))
    return out


def origin(e: Event) -> str:
    """Who wrote `e`: the relay (an attempt, or a record skipped or cancelled), the
    feedback receiver (an asynchronous bounce or delay, a complaint), or the
    way an unsubscribe came (one-click, mailto, or another writer's `reason`)."""
    why = FeedbackReason.of(e.reason)
    if e.disposition is Disposition.UNSUBSCRIBED:
        if why is not None and why.is_unsubscribe:
            return why.value
        return f"unsubscribe ({e.reason or 'unknown'})"
    if e.disposition is Disposition.COMPLAINED or why in (
        FeedbackReason.ASYNC_BOUNCE,
        FeedbackReason.ASYNC_DELAY,
    ):
        return FEEDBACK_RECEIVER
    return RELAY_ATTEMPT


@dataclass(frozen=True)
class Fate:
    """What happened to one recipient in one campaign (or one message without a
    campaign): the relay's attempts, and what came back after them."""

    campaign: str | None
    events: tuple[Event, ...]  # in time order, attempts and what came back

    @property
    def attempts(self) -> tuple[Event, ...]:
        return tuple(e for e in self.events if origin(e) == RELAY_ATTEMPT)

    @property
    def returned(self) -> tuple[Event, ...]:
        """What came back: asynchronous bounces and delays, complaints, unsubscribes."""
        return tuple(e for e in self.events if origin(e) != RELAY_ATTEMPT)

    @property
    def last(self) -> Event:
        """The relay's last word (the last event, when no attempt is on the topic any more)."""
        return (self.attempts or self.events)[-1]

    @property
    def final(self) -> bool:
        return self.last.disposition in FINAL

    def summary(self) -> str:
        parts = []
        if self.attempts:
            e = self.last
            state = e.disposition.value if self.final else f"{e.disposition.value}, will be retried"
            parts.append(
                f"{state} at {iso(e.time)} after {len(self.attempts)} attempt(s): {reply_of(e)}"
            )
        else:
            parts.append("no attempt on the events topic (expired from it?)")
        for e in self.returned:
            what = e.disposition.value + (f" ({e.bounce_class})" if e.bounce_class else "")
            parts.append(f"then {what} at {iso(e.time)} via {origin(e)}")
        return "; ".join(parts)


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
    return sorted(out, key=lambda f: f.events[0].time)


FATE_HEADERS = ("TIME", "CAMPAIGN", "SOURCE", "DISPOSITION", "CLASS", "ATTEMPT", "EGRESS", "REPLY")
HELD_HEADERS = ("REASON", "SOURCE", "SCOPE", "SINCE", "DETAIL")
MAX_CELL = 100  # a reply or detail cell: enough to read, short enough for a terminal


def fate_row(e: Event) -> list[str]:
    """One line of a fate: an attempt of the relay, or what came back and from where."""
    attempt = str(e.attempt) if origin(e) == RELAY_ATTEMPT else "-"
    return [
        iso(e.time),
        e.campaign or e.message_id,
        origin(e),
        e.disposition.value,
        e.bounce_class or "-",
        attempt,
        e.egress_ip or "-",
        reply_of(e)[:MAX_CELL],
    ]


def held_row(h: Held) -> list[str]:
    """One suppression in force: why, who said so (its kind and text), where it holds."""
    e = h.entry
    kind = source_kind(e.source)
    who = e.source or "unknown"
    if not who.startswith(kind):  # "unsubscribe:spring" says its kind already
        who = f"{kind}: {who}"
    return [e.reason, who, h.scope_text, iso(e.time), (e.detail or "-")[:MAX_CELL]]


def reply_of(e: Event) -> str:
    """The SMTP reply of an event as one line: code, enhanced code, text (or the reason)."""
    parts = [str(e.smtp_code) if e.smtp_code else "", e.enhanced_code or "", e.reply or ""]
    if e.smtp_code and (e.reply or "").startswith(str(e.smtp_code)):
        parts = [e.reply or ""]  # a DSN's Diagnostic-Code is the whole reply, code included
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
