"""Which operator process may produce a campaign's fan-out: the holder named in its checkpoint.

Two operator processes can run one campaign's fan-out at once: during a
peering hand-over kopf removes the stopping replica from the peering object
while its fan-out thread is still producing a chunk, and a replica cut off
from the apiserver (or frozen) is replaced while it may still produce. Both
would resume from the same checkpoint and produce the same indices twice.

Two fences keep that from happening:

- **The checkpoint** (Kubernetes). Every RUNNING checkpoint names its holder
  (pod, pid and start time of the operator process) and when it wrote
  (`held_at`). A process claims a fan-out with a write conditional on the
  resourceVersion it read, and the holder looks at the checkpoint before
  every chunk and stops once another process holds it.
- **The transaction** (Kafka). Each chunk is produced in a Kafka transaction
  under a transactional id of the campaign's own (`transactional_id`),
  committed before the next checkpoint is written. The new holder claims the
  checkpoint *first*, then calls `init_transactions`: the broker bumps the
  id's epoch, aborts whatever the old holder left open and refuses its every
  later send and commit (`ProducerFencedError`). Only then does the new holder
  scan the tail of the topic, `read_committed`, so it sees exactly what was
  committed and nothing can be committed behind its back.

So the wait before a takeover no longer guards exactly-once; it only keeps
two live processes that both run the daemon (two standalone operators, or
both peering replicas acting for a moment) from taking a fan-out back and
forth, each takeover aborting the other's chunk. A process resumes a fan-out
held by another once that holder released it (a clean stop writes no
holder), has demonstrably ended (same pod, its pid gone: a restarted
container), or has written no checkpoint for TAKEOVER_SECONDS: a live holder
writes one before every chunk, a few seconds apart, so 20 s of silence means
it is dead, frozen or cut off. A takeover that is wrong (a holder that was
only slow) costs one aborted chunk, which the new holder produces again, once.

Whether the holder's pod still exists is not asked: a peering standby runs
the daemon only after the dead replica's keep-alive expired (30 s with the
chart's default lifetime), by which time its holder has been silent longer
than TAKEOVER_SECONDS anyway, and reading pods of the operator's own
namespace would need one more RBAC rule for nothing.

What this does not prevent: two processes that both keep running the daemon
(two standalone operators) with chunks slower than TAKEOVER_SECONDS take the
fan-out from each other at every chunk and abort each other's transactions:
no recipient twice, but no progress either. A holder renews `held_at` once
per chunk only.

Pure: the clock and the process probe are passed in.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

# A live holder writes a checkpoint before every chunk (2000 records: a few
# seconds); 20 s of silence means it is gone, and stays below the peering
# keep-alive lifetime (30 s), so a crashed replica's fan-outs resume as soon as
# its standby acts. Since the broker fences the old holder, this no longer
# needs to outlast a chunk's way to Kafka (the 200 s it was).
TAKEOVER_SECONDS = float(os.environ.get("MAILPIPE_FANOUT_TAKEOVER_SECONDS", "20"))
# Kafka keeps a transactional id in a 16-bit length-prefixed string; ours is at
# most 26 + 63 (namespace) + 253 (name) + 36 (uid) + 2 characters, far below.
TRANSACTIONAL_ID_PREFIX = "mailpipe._operator.fanout."


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


def transactional_id(namespace: str, name: str, uid: str) -> str:
    """The Kafka transactional id of one campaign's fan-out: every operator process
    producing it uses this one, so the broker fences all but the latest.

    The uid keeps a re-created campaign of the same name apart; the `_operator`
    segment keeps it out of every namespace's space (`mailpipe.<namespace>.`,
    DNS labels have no `_`), so no tenant's transactional-id ACL covers it and a
    tenant cannot fence the operator's fan-out."""
    return f"{TRANSACTIONAL_ID_PREFIX}{namespace}.{name}.{uid}"


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
