"""The relay's seams: protocols between the engine and its IO adapters.

The engine (scheduler, ready queues, warm-up, classification) depends only on
these protocols; the Kafka adapter and the SMTP transport implement them, and
`mailpipe.relay.fakes` has in-memory versions so the engine's unit tests need
no broker and no network. Integration tests use the real adapters.

A transport never raises for a delivery outcome: connection refusals, DNS
failures and null MX come back as synthesized SMTP replies for every
recipient (RFC 3463 codes), so one classifier decides every disposition.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from mailpipe.contracts.tls_outcome import TLSOutcome


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One Kafka record as the engine sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    # The producer's Kafka headers, kept so a DLQ copy carries them (tracing ids,
    # schema names: whatever the producer needs to find its record again).
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class Revoked:
    """Partitions taken from this relay by a rebalance, handed over in order
    with the records: the engine forgets the old assignment before it sees any
    record of the next one (see ARCHITECTURE.md, "The path of a delivery record")."""

    partitions: tuple[TopicPartition, ...]


@dataclass(frozen=True, slots=True)
class Revoking:
    """A rebalance starts and these partitions may move: the last moment this
    relay's commits for them are accepted. The engine holds back new work of
    them, lets what is running finish (bounded), and calls `reply` with what
    may be committed: the source commits it, finished-ahead offsets included,
    before the relay rejoins (see ARCHITECTURE.md, "Nothing sent twice on a hand-over")."""

    partitions: tuple[TopicPartition, ...]
    reply: Callable[[dict[TopicPartition, int], dict[TopicPartition, frozenset[int]]], None]


@dataclass(frozen=True, slots=True)
class Assigned:
    """A rebalance ended: `partitions` is the whole new assignment (work of them
    held back by `Revoking` may go on). For each partition new to this relay,
    `committed` has the group's position (None: no commit yet) and
    `finished_ahead` the offsets past it that the previous owner finished
    (from the commit's metadata): those are not sent again."""

    partitions: tuple[TopicPartition, ...]
    committed: Mapping[TopicPartition, int | None] = field(default_factory=dict)
    finished_ahead: Mapping[TopicPartition, frozenset[int]] = field(default_factory=dict)


Control = Revoked | Revoking | Assigned


class RecordSource(Protocol):
    """A consumer-group member: records in, commits out."""

    async def poll(self, max_records: int) -> Sequence[SourceRecord | Control]:
        """Up to `max_records` records, and every rebalance notice (`Control`), each
        in its place in the stream (a `Revoked` or `Assigned` comes before any
        record read after it); empty when nothing arrived within a short wait.
        With 0 it only delivers control, without waiting."""
        ...

    async def commit(
        self,
        offsets: dict[TopicPartition, int],
        finished_ahead: Mapping[TopicPartition, Collection[int]] | None = None,
    ) -> None:
        """Commit `next offset to read` per partition (Kafka's convention), with
        the offsets past it already finished, for whoever reads it next."""
        ...

    def pause(self, partitions: Sequence[TopicPartition]) -> None: ...

    def resume(self, partitions: Sequence[TopicPartition]) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...


class RecordSink(Protocol):
    """A producer: `send` starts producing at once and returns an awaitable that
    completes only after the broker acknowledged the record (acks=all)."""

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Awaitable[None]: ...

    async def flush(self) -> None: ...


class Stage(enum.StrEnum):
    """Where the reply that decided a recipient came from. The same code means
    different things by stage (a 5.1.1 greeting refuses the host, not the
    mailbox; a 5.7.1 after RCPT refuses that recipient, after MAIL the sender),
    so the transport reports it with every reply (`TransactionResult.detail`)."""

    DNS = "dns"  # synthesized: the domain has nowhere to deliver, or DNS failed
    CONNECT = "connect"  # synthesized: no connection (refused, timeout, unreachable)
    GREETING = "greeting"  # the server's banner refused us
    EHLO = "ehlo"
    TLS = "tls"  # synthesized: TLS required and absent or failed
    LOCAL = "local"  # synthesized: refused without asking (SIZE, SMTPUTF8 not offered)
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the reply to DATA itself
    MESSAGE = "message"  # the reply after the message's final dot
    LOST = "lost"  # synthesized: the connection broke mid-transaction


class SMTPReply(NamedTuple):
    code: int
    text: str
    enhanced: str | None = None  # RFC 3463 "x.y.z", parsed from text when present


class RateGate(Protocol):
    """The record's rate token (`tokens.RecordToken`), taken by the transport on
    a greeted connection right before each MAIL FROM it writes (ARCHITECTURE.md, "Limits hold
    pool-wide"): receivers count what arrives, not what a relay meant to send."""

    async def before_mail(self) -> None:
        """Wait for the token and take it (a record holding one rides on it)."""
        ...

    def unused(self) -> None:
        """The MAIL FROM `before_mail` was called for was not written: give it back."""
        ...

    def renew(self) -> None:
        """The last MAIL FROM may have arrived and is retried on another connection:
        the retry takes a token of its own."""
        ...


@dataclass(frozen=True, slots=True)
class Envelope:
    """One SMTP transaction to attempt: one sender, recipients of one domain."""

    domain: str
    sender: str
    recipients: tuple[str, ...]
    message: bytes
    egress_address: str
    helo: str
    # The destination's shaping decides how many messages one connection carries
    # (`scheduling.Scheduler.policy`); None = reuse while the connection lives.
    messages_per_connection: int | None = None
    # The record's rate token, taken just before MAIL FROM; None = not rate-shaped
    # (tests that drive the transport alone).
    gate: RateGate | None = None
    # Its site (`contracts.sites`) and the site's connection limit: the pooled
    # idle connections of a site count towards it (a receiver counts them), so
    # the transport closes one before it opens another past the limit.
    site: str = ""
    max_connections: int | None = None


@dataclass(slots=True)
class TransactionResult:
    """Per-recipient replies of one transaction, in `Envelope.recipients` order."""

    replies: dict[str, SMTPReply]
    mx_host: str | None = None
    # recipient -> the `Stage` whose reply decided it (the same code means
    # different things by stage: see `classify`)
    detail: dict[str, Stage] = field(default_factory=dict)
    # the TLS of the connection that carried it, or of the one that refused to
    # (None: no connection was opened, e.g. a DNS failure)
    tls: TLSOutcome | None = None


class Transport(Protocol):
    """Delivers envelopes over SMTP (MX lookup, connection reuse, TLS policy)."""

    async def deliver(self, envelope: Envelope) -> TransactionResult: ...

    async def close(self) -> None: ...


class SiteLookup(Protocol):
    """A destination's site from its MX hosts (`contracts.sites`, rule 3): the
    relay's MX resolver, so the answer a delivery uses is the one that keyed it."""

    def known_site(self, domain: str) -> str | None:
        """The site if the MX answer is at hand (cached), else None: ask `site`."""
        ...

    async def site(self, domain: str) -> str:
        """The site after an MX lookup; the domain itself when it has no MX names
        (a static route, a lookup that failed: delivery reports why)."""
        ...


class Clock(Protocol):
    """Injectable time: wall clock for dates and warm-up days, monotonic for rates."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...
