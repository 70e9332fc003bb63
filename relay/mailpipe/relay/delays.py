"""Delay topics: postponing a record, and letting it wait in memory until it is due.

"Postpone" is the one word for "produce this record to a delay topic with a
later `not_before`" (ARCHITECTURE.md, "Glossary"), whatever the cause; the cause
is a `PostponeReason` and labels `mailpipe_postponed_records_total`. A record
read back from a delay topic before it is due *waits* here, in memory, with
its partition paused: a delay topic is FIFO with one step, so the records
behind it are due later still.

Few hops whatever the steps: a record goes to the largest step not beyond its
wait, waits that step out (paused, as above), and then, if what is left of its
wait is short (`Postponer.holds`), is **held** in memory until due with its
partition resumed, instead of hopping through a short step again and again
(steps 1s/30s/1m and a 40 s retry: one write to the 30 s topic, not one to the
30 s topic and nineteen to the 1 s one). A held record is not committed, so a
crash or a rebalance re-reads it (never lost, and its own due time still
holds). It also keeps its partition's commit behind it, so the records read
after it stay in the read window until it finishes: at most a quarter of the
window is held at once, and a window stuck full gives held records back to a
delay topic (each with its own due time) along with the queued ones.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Awaitable, Collection, Sequence

from mailpipe.contracts import sites
from mailpipe.contracts.config import RelayConfig
from mailpipe.contracts.wire import DeliveryRecord, encode

from .metrics import RelayMetrics
from .ports import Clock, RecordSink, RecordSource, SourceRecord, TopicPartition
from .work import Work

# Records due this soon are sent now: a round trip through a delay topic costs more.
DUE_SLACK_SECONDS = 0.5
# A retry computed as `now + 600` reaches the step choice a moment later as 599.99 s:
# this much slack keeps it on the 10m step it was meant for, not the 1m one (where
# it would wait in memory for nine minutes with its partition paused).
STEP_SLACK_SECONDS = 1.0
# Without delay topics a postponed record goes back to the outbound topic and
# waits in memory; this is how soon a full queue or a stuck window tries again.
NO_DELAY_TOPIC_SECONDS = 1.0
# Without delay topics, how long a paused campaign's record waits before it is looked at again.
NO_DELAY_TOPIC_CAMPAIGN_RECHECK_SECONDS = 60.0
# The longest rest of a wait held in memory: no longer than one trip through the
# longest delay topic (so memory holds nothing longer than a topic's own wait
# did), and at most this, as a held record ties up a read-window slot.
MAX_HOLD_SECONDS = 300.0
# Of the read window, the share held records may take: the rest stays for mail that is due.
HOLD_SHARE_OF_WINDOW = 4


class PostponeReason(enum.StrEnum):
    """Why a record went to a delay topic."""

    RETRY = "retry"  # some recipients were deferred (4xx): next attempt on the retry schedule
    NOT_YET_DUE = "not_yet_due"  # read from the outbound topic with a future not_before
    QUEUE_FULL = "queue_full"  # its domain's ready queue was full ("No head-of-line blocking")
    WINDOW_RELIEF = "window_relief"  # it pinned a full read window (see window.py)
    CAMPAIGN_PAUSED = "campaign_paused"  # its campaign is suspended: look again later
    NO_EGRESS_IP = "no_egress_ip"  # every IP backed off or out of warm-up budget
    STALLED_DOMAIN = "stalled_domain"  # its domain outlived the tarpit budget (see stalls.py)
    SITE_FORWARD = "site_forward"  # read under another key than its site: to the site's partition


class Postponer:
    """Chooses the delay topic for a due time and produces the record there."""

    def __init__(self, sink: RecordSink, clock: Clock, metrics: RelayMetrics) -> None:
        self.sink = sink
        self.clock = clock
        self.metrics = metrics

    def reconfigure(self, config: RelayConfig) -> None:
        self.outbound_topic = config.kafka.outbound_topic
        self.steps = sorted((s.seconds, t) for s, t in config.kafka.delay_topics.items())
        self.step_of_topic = {t: step for step, t in self.steps}
        self.hold_limit = max(1, config.kafka.max_in_flight_records // HOLD_SHARE_OF_WINDOW)

    def holds(self, remaining: float, held: int) -> bool:
        """Whether a record whose wait on its delay topic ended, still `remaining`
        seconds from due, is held in memory for the rest (see the module doc)
        rather than postponed again; `held` records are held already."""
        if not self.steps or held >= self.hold_limit:
            return False
        return remaining <= min(self.longest_seconds, MAX_HOLD_SECONDS) + STEP_SLACK_SECONDS

    @property
    def shortest_seconds(self) -> float:
        """The soonest a postponed record comes back: the first delay step."""
        return self.steps[0][0] if self.steps else NO_DELAY_TOPIC_SECONDS

    @property
    def longest_seconds(self) -> float:
        return self.steps[-1][0] if self.steps else NO_DELAY_TOPIC_CAMPAIGN_RECHECK_SECONDS

    def waits_in_memory(self, topic: str) -> bool:
        """Whether a not-yet-due record read from `topic` waits here rather than
        being postponed: it is on a delay topic already, or there is none."""
        return topic in self.step_of_topic or not self.steps

    def wait_until(self, src: SourceRecord, due: float, now: float) -> float:
        """How long a not-yet-due record read from a delay topic waits in memory:
        until it is due, but at most one step past its arrival on that topic.

        The records behind it in the partition arrived later, so none of them can
        be due before this one is looked at again; a record due later than that
        (next week, or put on too short a step) is then postponed again instead
        of pausing its partition until it is due (issue 10, finding 4)."""
        step = self.step_of_topic.get(src.topic)
        if step is None:
            return due  # no delay topics: the outbound topic, re-read, waits in memory
        # A producer's timestamp in the future must not stretch the wait.
        arrived = min(src.timestamp_ms / 1000, now) if src.timestamp_ms > 0 else now
        return min(due, arrived + step)

    def topic_for(self, seconds: float) -> str:
        """The delay topic whose step is the largest one not beyond `seconds`."""
        if not self.steps:
            return self.outbound_topic  # no delay topics: re-read, wait in memory
        chosen = self.steps[0][1]
        for step, topic in self.steps:
            if step <= seconds + STEP_SLACK_SECONDS:
                chosen = topic
        return chosen

    def postpone(
        self,
        record: DeliveryRecord,
        due: float,
        reason: PostponeReason,
        headers: Sequence[tuple[str, bytes]] = (),
        *,
        site: str,
    ) -> Awaitable[None]:
        """Produce `record` with `not_before = due`, keyed by its `site` (so it comes
        back on the site's partition: `contracts.sites`); completes when Kafka
        acknowledged it. `headers`, the producer's Kafka headers, go with it: its
        events carry them."""
        record = record.model_copy(update={"not_before": due})
        self.metrics.postponed.labels(record.domain, reason).inc()
        topic = self.topic_for(due - self.clock.time())
        return self.sink.send(topic, site.encode(), encode(record), headers)

    def forward(self, work: Work) -> Awaitable[None]:
        """Produce the bytes `work` was read from again, unchanged, to the same topic
        keyed by its site: read under another key (a producer that keys by domain, a site
        whose config changed), it belongs to the relay that owns the site's
        partition. The hop count rides in a header (`contracts.sites.hopped`)."""
        src = work.src
        self.metrics.postponed.labels(work.domain, PostponeReason.SITE_FORWARD).inc()
        return self.sink.send(src.topic, work.site.encode(), src.value, sites.hopped(src.headers))


class Waiting:
    """Records read before they are due, in due order: waiting with their partitions
    paused (`add`), or held with them running (`hold`)."""

    def __init__(self, source: RecordSource) -> None:
        self.source = source
        self._heap: list[tuple[float, int, bool, Work]] = []  # (until, seq, paused, work)
        self._per_tp: dict[TopicPartition, int] = {}
        self._seq = itertools.count()  # ties keep arrival order; Work is not comparable
        self.held = 0

    def add(self, work: Work, until: float) -> None:
        heapq.heappush(self._heap, (until, next(self._seq), True, work))
        tp = work.src.tp
        self._per_tp[tp] = self._per_tp.get(tp, 0) + 1
        self.source.pause([tp])

    def hold(self, work: Work, until: float) -> None:
        """Keep `work` until `until` without pausing its partition: its delay topic's
        step is over, so the records behind it may be due sooner."""
        heapq.heappush(self._heap, (until, next(self._seq), False, work))
        self.held += 1

    def due(self, now: float) -> list[Work]:
        """Take the records whose wait ended by `now` (with slack), resuming partitions
        left with none; a record still not due is the caller's to hold or postpone."""
        out = []
        while self._heap and self._heap[0][0] <= now + DUE_SLACK_SECONDS:
            _, _, paused, work = heapq.heappop(self._heap)
            out.append(work)
            if not paused:
                self.held -= 1
                continue
            tp = work.src.tp
            self._per_tp[tp] -= 1
            if self._per_tp[tp] == 0:
                del self._per_tp[tp]
                self.source.resume([tp])
        return out

    def release_held(self) -> list[Work]:
        """Take every held record (a read window stuck full: they go back to a delay topic)."""
        out = [h[3] for h in self._heap if not h[2]]
        self._heap = [h for h in self._heap if h[2]]
        heapq.heapify(self._heap)
        self.held = 0
        return out

    def drop(self, partitions: Collection[TopicPartition]) -> int:
        """Forget the records of revoked partitions (the new owner re-reads them),
        and resume the ones this paused: kafka-python keeps a partition's paused
        flag across a rebalance that assigns it again (`assign_from_subscribed`),
        so a delay partition revoked while paused and given back to this relay
        was never fetched again (a single relay's records stalled for good)."""
        before = len(self._heap)
        self._heap = [h for h in self._heap if h[3].src.tp not in partitions]
        heapq.heapify(self._heap)
        self.held = sum(1 for h in self._heap if not h[2])
        paused = [tp for tp in partitions if self._per_tp.pop(tp, None)]
        if paused:
            self.source.resume(paused)
        return before - len(self._heap)

    def __len__(self) -> int:
        return len(self._heap)
