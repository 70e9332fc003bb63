"""Topic naming: the one place that turns a pool into its Kafka topic names.

The operator creates a pool's topics and writes their names into the relay
config; the relay, the tests and the benchmarks read and write them. All of
them build the names here, so `<prefix>.outbound`, `<prefix>.events`,
`<prefix>.dlq` and `<prefix>.delay.<step>` (ARCHITECTURE.md, "Kafka topics")
are spelled once. Suppressions and campaign controls are shared by every pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .delays import DelayStep

SUPPRESSIONS_TOPIC = "mailpipe.suppressions"  # compacted, keyed by lower-cased address
CONTROL_TOPIC = "mailpipe.campaigns"  # compacted, keyed by 'namespace/name'


def pool_prefix(namespace: str, name: str) -> str:
    """Default topic prefix of a SendingPool: 'namespace.name'."""
    return f"{namespace}.{name}"


@dataclass(frozen=True)
class Topics:
    """The topics one pool reads and writes."""

    outbound: str
    events: str
    dlq: str
    delay: dict[DelayStep, str] = field(default_factory=dict)
    suppressions: str = SUPPRESSIONS_TOPIC
    control: str = CONTROL_TOPIC

    @classmethod
    def for_prefix(cls, prefix: str, delay_steps: Iterable[str] = ()) -> Topics:
        """A pool's topics under `prefix`; each delay step is validated (`DelayStep`)."""
        steps = [DelayStep(s) for s in delay_steps]
        return cls(
            outbound=f"{prefix}.outbound",
            events=f"{prefix}.events",
            dlq=f"{prefix}.dlq",
            delay={step: f"{prefix}.delay.{step}" for step in steps},
        )

    def all(self) -> list[str]:
        """The pool's own topics, in creation order (the shared ones are not the pool's)."""
        return [self.outbound, self.events, self.dlq, *self.delay.values()]


def owned_topics(prefix: str, existing: Iterable[str]) -> list[str]:
    """The topics among `existing` that belong to the pool with `prefix`:
    outbound, events, DLQ and every delay topic, including those of delay
    steps the pool no longer lists. Sorted. Never the shared topics."""
    own = {f"{prefix}.outbound", f"{prefix}.events", f"{prefix}.dlq"}
    delay = f"{prefix}.delay."
    out = []
    for name in existing:
        if name in own:
            out.append(name)
        elif name.startswith(delay):
            try:
                DelayStep(name[len(delay) :])
            except ValueError:
                continue  # not a delay step: another pool's topic under a longer prefix
            out.append(name)
    return sorted(out)
