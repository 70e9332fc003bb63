"""In-memory stand-ins for the engine's ports, for unit tests without a broker.

Integration tests use the real Kafka adapter and SMTP transport; these exist so
the engine's logic (ordering, commits, classification, throttling) is tested
fast and deterministically.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence

from mailpipe.contracts import sites
from mailpipe.contracts.tls_outcome import TLSOutcome

from .classify import reply
from .ports import (
    Control,
    Envelope,
    Revoked,
    SourceRecord,
    TopicPartition,
    TransactionResult,
)


class MemorySource:
    """A partitioned log with a cursor per partition, pause/resume, commits and
    revocations (handed over in-band by `poll`, like the Kafka source does)."""

    def __init__(self) -> None:
        self.logs: dict[TopicPartition, list[SourceRecord]] = defaultdict(list)
        self.positions: dict[TopicPartition, int] = defaultdict(int)
        self.paused: set[TopicPartition] = set()
        self.revoked: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []
        self.finished_ahead: dict[TopicPartition, frozenset[int]] = {}  # of the last commit
        self.refuse_commits = False  # a broker away: every commit fails
        self._control: list[Control] = []

    def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[tuple[str, bytes], ...] = (),
        timestamp_ms: int = 0,
    ) -> None:
        """Add a record; `timestamp_ms` is its producer's time (0: unknown)."""
        tp = TopicPartition(topic, partition)
        offset = len(self.logs[tp])
        self.logs[tp].append(
            SourceRecord(topic, partition, offset, key, value, timestamp_ms, headers)
        )

    def revoke(self, partitions: Sequence[TopicPartition]) -> None:
        """A rebalance took `partitions`: the next poll says so first, and no more
        of their records are handed out."""
        self.revoked.update(partitions)
        self._control.append(Revoked(tuple(partitions)))

    def notify(self, notice: Control) -> None:
        """Hand `notice` (a `Revoking` or `Assigned`) to the engine with the next poll."""
        self._control.append(notice)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read `tp` again from `offset` (the partition assigned back, from its commit)."""
        self.revoked.discard(tp)
        self.positions[tp] = offset

    async def poll(self, max_records: int) -> Sequence[SourceRecord | Control]:
        out: list[SourceRecord | Control] = [*self._control]
        control = len(out)
        self._control.clear()
        for tp, log in self.logs.items():
            if tp in self.paused or tp in self.revoked:
                continue
            while self.positions[tp] < len(log) and len(out) - control < max_records:
                out.append(log[self.positions[tp]])
                self.positions[tp] += 1
        if not out:
            await asyncio.sleep(0.001)
        return out

    async def commit(
        self,
        offsets: dict[TopicPartition, int],
        finished_ahead: Mapping[TopicPartition, Collection[int]] | None = None,
    ) -> None:
        if self.refuse_commits:
            raise ConnectionError("broker unavailable")
        self.commits.append(dict(offsets))
        self.finished_ahead = {tp: frozenset(o) for tp, o in (finished_ahead or {}).items()}

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self.paused.update(partitions)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self.paused.difference_update(partitions)

    def assignment(self) -> set[TopicPartition]:
        return set(self.logs) - self.revoked

    @property
    def committed(self) -> dict[TopicPartition, int]:
        merged: dict[TopicPartition, int] = {}
        for c in self.commits:
            merged.update(c)
        return merged


class MemorySink:
    """Collects produced records per topic; `fail` makes every send raise, and
    `refuse` names topics whose sends raise (a broker refusing a record, such as
    one over its size limit)."""

    def __init__(self) -> None:
        self.topics: dict[str, list[tuple[bytes | None, bytes | None]]] = defaultdict(list)
        self.headers: dict[str, list[tuple[tuple[str, bytes], ...]]] = defaultdict(list)
        self.fail = False
        self.refuse: set[str] = set()

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        await asyncio.sleep(0)
        if self.fail:
            raise ConnectionError("sink unavailable")
        if topic in self.refuse:
            raise ValueError(f"{topic} refused the record (e.g. MessageSizeTooLarge)")
        self.topics[topic].append((key, value))
        self.headers[topic].append(tuple(headers))

    async def flush(self) -> None:
        return None


class ScriptedTransport:
    """Answers each recipient from a script: address -> replies, consumed in order."""

    def __init__(self, default: str = "250 2.0.0 OK") -> None:
        self.script: dict[str, list[str]] = {}
        self.default = default
        self.envelopes: list[Envelope] = []
        self.delay_seconds = 0.0
        self.tls: TLSOutcome | None = None  # the TLS every transaction reports

    def answer(self, address: str, *replies: str) -> None:
        self.script[address.lower()] = list(replies)

    async def deliver(self, envelope: Envelope) -> TransactionResult:
        self.envelopes.append(envelope)
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)  # connection set-up: before the token
        if envelope.gate is not None:
            await envelope.gate.before_mail()  # as the SMTP session does, before MAIL FROM
        replies = {}
        for rcpt in envelope.recipients:
            queue = self.script.get(rcpt.lower())
            text = (
                queue.pop(0) if queue and len(queue) > 1 else (queue[0] if queue else self.default)
            )
            code, _, rest = text.partition(" ")
            replies[rcpt] = reply(int(code), rest)
        return TransactionResult(replies=replies, mx_host="mx.fake", tls=self.tls)

    async def close(self) -> None:
        return None


class MXSites:
    """`ports.SiteLookup` from a table of MX host names per domain (`contracts.sites`,
    rule 3); a domain is `known_site` only once `site` looked it up, as with a
    resolver's cache."""

    def __init__(self, mx_hosts: Mapping[str, Sequence[str]]) -> None:
        self.mx_hosts = mx_hosts
        self.looked_up: list[str] = []

    def known_site(self, domain: str) -> str | None:
        return self._site(domain) if domain in self.looked_up else None

    async def site(self, domain: str) -> str:
        await asyncio.sleep(0)  # an answer comes later than the question
        self.looked_up.append(domain)
        return self._site(domain)

    def _site(self, domain: str) -> str:
        return sites.mx_site(self.mx_hosts.get(domain, ())) or domain
