"""The hand-off: how records and revocations cross from the consumer thread to
the event loop, and the buffer credit that bounds what waits in between.

It is its own module because it is where rebalance safety and back-pressure
meet, and both are easy to get subtly wrong (ARCHITECTURE.md, "The path of a
delivery record"). It imports no Kafka client, so its rules are unit-tested
without a broker (tests/relay/unit/test_kafka_handoff.py):

- Order. Batches of records and `Revoked` notices travel through one FIFO
  queue. When a revocation is taken, the records fetched before it for the
  partitions it names are dropped, unhanded: they belong to the new owner, who
  re-reads them from the committed offset. A revocation is handed out ahead of
  any record still waiting here; that is safe because every waiting record of
  its partitions was fetched *after* it (earlier ones were just dropped), and
  records of other partitions do not care. So the engine forgets an old
  assignment before it sees any record of the next one.
- Other notices. `Revoking` (a rebalance starts) and `Assigned` (it ended,
  with the previous owner's finished-ahead offsets) travel the same queue
  and are handed out with the revocations, in order: `Assigned` always
  after the `Revoked` of the same rebalance and before any record of a
  partition it brings.
- Credit. The consumer thread takes one credit per record it hands over and
  stops fetching while none is left; the loop gives credits back for every
  record that leaves the hand-off, handed to the engine *or dropped*. A credit
  lost on either path would pause consumption for good.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterable

from ..ports import Control, Revoked, SourceRecord, TopicPartition

Item = SourceRecord | Control


class HandOff:
    """Thread side: `full`, `put_records`, `put_revoked`, `put_control`. Loop side: `take`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # records fetched but not yet taken by the engine
        self._queue: queue.SimpleQueue[list[SourceRecord] | Control] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _buffered, written by both sides
        self._buffered = 0
        self._pending: deque[SourceRecord] = deque()  # loop side only: read, not yet taken

    # -- consumer thread -------------------------------------------------------

    def full(self) -> bool:
        with self._lock:
            return self._buffered >= self.limit

    def put_records(self, batch: list[SourceRecord]) -> None:
        if not batch:
            return
        with self._lock:
            self._buffered += len(batch)
        self._queue.put(batch)

    def put_revoked(self, partitions: Iterable[TopicPartition]) -> None:
        self._queue.put(Revoked(tuple(sorted(partitions))))

    def put_control(self, notice: Control) -> None:
        self._queue.put(notice)

    # -- event loop ------------------------------------------------------------

    def take(self, max_records: int) -> list[Item]:
        """Every revocation (and other notice) that arrived, then up to
        `max_records` records.

        The queue is drained completely every time, whatever `max_records`
        (0 included): a revocation must reach the engine at once, even while
        its read window is full."""
        revocations: list[Item] = []
        dropped = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Revoked):
                gone = set(item.partitions)
                kept = deque(r for r in self._pending if r.tp not in gone)
                dropped += len(self._pending) - len(kept)
                self._pending = kept
                revocations.append(item)
            elif isinstance(item, list):
                self._pending.extend(item)
            else:
                revocations.append(item)
        taken = min(max(max_records, 0), len(self._pending))
        records = [self._pending.popleft() for _ in range(taken)]
        if dropped or taken:
            with self._lock:
                self._buffered -= dropped + taken
        return revocations + records

    # -- state, for describe() ---------------------------------------------------

    @property
    def buffered(self) -> int:
        with self._lock:
            return self._buffered

    @property
    def pending(self) -> int:
        return len(self._pending)
