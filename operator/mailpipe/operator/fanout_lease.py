"""Which operator process may produce a campaign's fan-out: the holder named in its checkpoint.

Two operator processes can run one campaign's fan-out at once: during a
peering hand-over kopf removes the stopping replica from the peering object
while its fan-out thread is still producing a chunk, and a replica cut off
from the apiserver (or frozen) is replaced while it may still produce. Both
would resume from the same checkpoint and produce the same indices twice.

So every RUNNING checkpoint names its holder (pod, pid and start time of the
operator process) and when it wrote (`held_at`). A process resumes a fan-out
held by another only once that holder released it (a clean stop writes no
holder), has demonstrably ended (same pod, its pid gone: a restarted
container), or has written nothing for TAKEOVER_SECONDS — longer than a
chunk can take to reach Kafka, so whatever the old holder was producing has
landed and the resume's tail scan sees it. The old holder looks at the
checkpoint before every chunk (with a resourceVersion precondition on its
write) and stops once another process holds it.

What this cannot fence: a holder frozen in the middle of producing a chunk
for longer than TAKEOVER_SECONDS repeats at most that chunk when it wakes
(Kafka transactions with a per-campaign transactional id would fence it at
the broker; not done, see ARCHITECTURE.md).

Pure: the clock and the process probe are passed in.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

# A chunk's records reach Kafka within the producer's max_block_ms (60 s, a
# metadata wait per send) plus delivery_timeout_ms (120 s) of kafka-python's
# defaults; 20 s more for clocks of two nodes that disagree a little.
TAKEOVER_SECONDS = float(os.environ.get("MAILPIPE_FANOUT_TAKEOVER_SECONDS", "200"))


@dataclass(frozen=True)
class Holder:
    """One operator process: its pod (POD_ID, else the host name), pid and start time."""

    pod: str
    pid: int
    started: float

    def encode(self) -> str:
        return f"{self.pod}/{self.pid}/{self.started:.3f}"

    @classmethod
    def decode(cls, text: str) -> Holder | None:
        """The holder written by `encode`, or None for text it did not write."""
        pod, _, rest = text.rpartition("/")
        pod, _, pid = pod.rpartition("/")
        try:
            return cls(pod, int(pid), float(rest))
        except ValueError:
            return None


def this_process(started: float) -> Holder:
    return Holder(os.environ.get("POD_ID") or socket.gethostname(), os.getpid(), started)


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (in this pod's pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def may_produce(
    holder: str | None,
    held_at: float | None,
    me: Holder,
    now: float,
    alive: Callable[[int], bool] = pid_alive,
    takeover_seconds: float = TAKEOVER_SECONDS,
) -> tuple[bool, str]:
    """(whether `me` may produce this fan-out now, why) from its checkpoint's holder."""
    if holder is None:
        return True, "no holder"
    other = Holder.decode(holder)
    if other is None or other == me:
        return True, "held by this process" if other == me else "holder unreadable"
    if other.pod == me.pod and (other.pid == me.pid or not alive(other.pid)):
        return True, f"its holder {holder} has ended (same pod, process gone)"
    if held_at is None:
        return True, "holder wrote no time (an older operator)"
    silent = now - held_at
    if silent >= takeover_seconds:
        return True, f"its holder {holder} has written nothing for {silent:.0f} s"
    return False, (
        f"held by operator process {holder} (last checkpoint {silent:.0f} s ago): waiting "
        f"until it releases it or {takeover_seconds:.0f} s pass without a checkpoint"
    )
