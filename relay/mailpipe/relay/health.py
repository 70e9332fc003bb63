"""The relay's health: whether it is doing its job, and if not, why (pure state).

A relay can be running and still not doing its job: its consumer thread keeps
failing to read a batch (undecodable, corrupt, a broker error), or a follower
(suppressions, events, campaign control) stopped. Before, a consumer-thread
failure killed the thread and the relay with it (a crash loop that stopped the
pool, issue 10 finding 8) and a follower's failure was one log line. Here each
problem is a named check with its reason, for the probes the metrics
endpoint answers (`probes()`, served by `mailpipe.endpoints.ScrapeEndpoint`):
readiness (`/readyz`) is false while any problem is current, with the reasons
in the body; liveness (`/healthz`) is false only for what a restart
can cure (a thread that died).

Reported problems are current until `recover_seconds` pass without another
report: a batch that fails on every fetch keeps readiness false, one transient
error lets it recover on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# A batch that cannot be read fails every poll (seconds apart); a minute without
# a failure means the reader moved past whatever it was.
RECOVER_SECONDS = 60.0

Check = Callable[[], str | None]  # the reason something is broken, or None


@dataclass
class Problem:
    reason: str
    count: int
    last: float  # monotonic time of the last report


class Health:
    """Problems reported by any thread (the consumer thread reports, the HTTP
    server's thread reads) and checks evaluated when asked."""

    def __init__(
        self,
        recover_seconds: float = RECOVER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recover_seconds = recover_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._problems: dict[str, Problem] = {}
        self._fatal: dict[str, Check] = {}
        self._required: dict[str, Check] = {}

    def report(self, name: str, reason: str) -> None:
        """`name` is failing now, for `reason` (readiness false until it recovers)."""
        with self._lock:
            old = self._problems.get(name)
            count = old.count + 1 if old else 1
            self._problems[name] = Problem(reason, count, self._clock())

    def resolve(self, name: str) -> None:
        """`name` works again: its problem stops counting against readiness now."""
        with self._lock:
            self._problems.pop(name, None)

    def watch(self, name: str, check: Check) -> None:
        """A check whose failure makes the relay neither ready nor live (a dead thread)."""
        with self._lock:
            self._fatal[name] = check

    def require(self, name: str, check: Check) -> None:
        """A check asked at every readiness probe whose failure makes the relay not
        ready, but never restarts it (what a restart cannot cure: an egress IP
        that is not on this node). Its reason is shown as the check gives it."""
        with self._lock:
            self._required[name] = check

    def readiness(self) -> list[str]:
        """The reasons the relay is not ready; empty when it is."""
        now = self._clock()
        with self._lock:
            current = [
                f"{name}: {p.reason} ({p.count} times, last {now - p.last:.0f}s ago)"
                for name, p in sorted(self._problems.items())
                if now - p.last < self.recover_seconds
            ]
            required = sorted(self._required.items())
        unmet = [f"{name}: {reason}" for name, check in required if (reason := check())]
        return self.liveness() + unmet + current

    def liveness(self) -> list[str]:
        """The reasons the relay should be restarted; empty when it should not."""
        with self._lock:
            checks = sorted(self._fatal.items())
        out = []
        for name, check in checks:
            reason = check()
            if reason is not None:
                out.append(f"{name}: {reason}")
        return out

    def probes(self) -> dict[str, Callable[[], tuple[bool, str]]]:
        """`/readyz` and `/healthz` for the metrics endpoint: (healthy, the reasons)."""

        def probe(reasons: Callable[[], list[str]]) -> Callable[[], tuple[bool, str]]:
            def answer() -> tuple[bool, str]:
                failing = reasons()
                return (not failing, "; ".join(failing) if failing else "ok")

            return answer

        return {"/readyz": probe(self.readiness), "/healthz": probe(self.liveness)}
