"""Commands from the event loop to the consumer thread, as typed values.

The consumer is not thread-safe, so the loop never calls it: it queues one of
these and the consumer thread executes them in order (a commit never
overtakes a pause sent before it). A `Commit` carries the future the loop
awaits; pauses and resumes are fire-and-forget.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field

from ..ports import TopicPartition


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit `offsets` (next offset to read) of the partitions still assigned,
    each with its `metadata` (the finished-ahead offsets, `metadata.encode`);
    `done` resolves when the broker accepted it, or carries its error."""

    offsets: dict[TopicPartition, int]
    metadata: dict[TopicPartition, str] = field(default_factory=dict)
    done: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop fetching these partitions (records held until due, see the engine)."""

    partitions: tuple[TopicPartition, ...]


@dataclass(frozen=True, slots=True)
class Resume:
    partitions: tuple[TopicPartition, ...]


Command = Commit | Pause | Resume
