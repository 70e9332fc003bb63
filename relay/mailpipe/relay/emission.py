"""Emission: producing what a record's attempt decided, to the topics that carry it.

Disposition events to `<pool>.events`, hard-bounce suppressions to
the pool's suppression topic (and to this relay's own list at once, so a later
record to the address is skipped before the suppression comes back), and
undecodable or unrenderable records to `<pool>.dlq` with the reason. Every
send returns an awaitable that completes when Kafka acknowledged it: a
record's offset finishes only after all of them (ARCHITECTURE.md, "Nothing lost").
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
from collections.abc import Awaitable, Sequence
from typing import Any

from mailpipe.contracts.config import RelayConfig
from mailpipe.contracts.site_actions import SiteAction, encode_site_action
from mailpipe.contracts.suppressions import SuppressionList
from mailpipe.contracts.warmup import WarmupUsage, encode_usage
from mailpipe.contracts.wire import Event, Suppression, encode

from .metrics import RelayMetrics
from .ports import RecordSink, SourceRecord
from .settlement import Settlement


class DLQReason(enum.StrEnum):
    """Why a record went to the DLQ: the `reason` label of `mailpipe_dlq_records_total`.

    A fixed set, never text from the record or the error: the error's first
    word was once the label, and for an unknown field that is the producer's
    own field name, so random keys made a new time series each (issue 22)."""

    UNDECODABLE = "undecodable"  # not a delivery record of this wire version
    UNRENDERABLE = "unrenderable"  # a record whose message cannot be built
    RELAY_ERROR = "relay_error"  # the relay failed while handling it


DLQ_REASON_CHARS = 2000  # a reason quotes the offending value at most this much
# How much of an undecodable value a DLQ copy keeps: enough to see what it was,
# and far below Kafka's default 1 MB message limit, so the copy itself never
# fails to produce (a 200 KB non-UTF-8 value once escaped to 1.2 MB and stuck).
DLQ_COPY_BYTES = 64 * 1024


class Emitter:
    def __init__(
        self, sink: RecordSink, metrics: RelayMetrics, suppressions: SuppressionList
    ) -> None:
        self.sink = sink
        self.metrics = metrics
        self.suppressions = suppressions

    def reconfigure(self, config: RelayConfig) -> None:
        self.kafka = config.kafka

    def event(self, event: Event, headers: Sequence[tuple[str, bytes]] = ()) -> Awaitable[None]:
        """`headers`: the Kafka headers the producer set on the record (a trace id),
        carried onto its events so the producer can follow its record through."""
        key = (event.campaign or event.message_id).encode()  # a campaign's events stay in order
        return self.sink.send(self.kafka.events_topic, key, encode(event), headers)

    def warmup_usage(self, usage: WarmupUsage) -> Awaitable[None]:
        """This relay's warm-up counts, for the relays that take over partitions."""
        return self.sink.send(self.kafka.events_topic, usage.relay.encode(), encode_usage(usage))

    def site_action(self, action: SiteAction) -> Awaitable[None]:
        """A site action this relay decided, for the pool's other relays and the
        operator (`contracts.site_actions`); keyed by site, so one site's actions
        stay in order."""
        return self.sink.send(
            self.kafka.events_topic, action.site.encode(), encode_site_action(action)
        )

    def suppression(self, suppression: Suppression) -> Awaitable[None]:
        self.suppressions.add(suppression.address, suppression.reason.value)
        return self.sink.send(
            self.kafka.suppressions_topic, suppression.address.encode(), encode(suppression)
        )

    def settlement(
        self, settlement: Settlement, headers: Sequence[tuple[str, bytes]] = ()
    ) -> list[Awaitable[None]]:
        """Events (with the record's Kafka `headers`) and suppressions of a settlement
        (its retry record is postponed by `delays`)."""
        sends = [self.event(e, headers) for e in settlement.events]
        sends.extend(self.suppression(s) for s in settlement.suppressions)
        return sends

    async def dlq(self, src: SourceRecord, kind: DLQReason, reason: str) -> None:
        """A copy of `src` on the DLQ: `reason` (free text) goes in the copy,
        `kind` in the metric."""
        self.metrics.dlq.labels(kind.value).inc()
        await self.sink.send(self.kafka.dlq_topic, src.key, dlq_copy(src, reason), src.headers)


def dlq_copy(src: SourceRecord, reason: str) -> bytes:
    """The DLQ value for `src`: the reason, where it came from, and the original
    value (UTF-8 text, or base64 when it is not UTF-8) cut to DLQ_COPY_BYTES, so
    the copy always fits on the DLQ topic; its size and SHA-256 say what was cut."""
    raw = src.value or b""
    kept = raw[:DLQ_COPY_BYTES]
    value: dict[str, Any] = {
        "reason": reason[:DLQ_REASON_CHARS],
        "topic": src.topic,
        "partition": src.partition,
        "offset": src.offset,
        "value_bytes": len(raw),
        "value_sha256": hashlib.sha256(raw).hexdigest(),
        "truncated": len(kept) < len(raw),
    }
    try:
        value["value"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        value["value_base64"] = base64.b64encode(kept).decode()
    return json.dumps(value).encode()
