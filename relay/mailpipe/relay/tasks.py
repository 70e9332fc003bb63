"""The engine's background tasks: spawned, tracked, awaited on shutdown, described.

Every produce, lane and attempt runs as its own task so one slow domain never
waits on another (ARCHITECTURE.md, "No head-of-line blocking"); this keeps the set of them in
one place, so shutdown can give them a grace period and a stuck relay can say
where its tasks are suspended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("mailpipe.relay.engine")

MAX_AWAIT_CHAIN = 12  # deeper chains are library internals, not where the relay waits


def task_stacks(tasks: set[asyncio.Task[Any]], limit: int = 3) -> list[str]:
    """Where a few tasks are suspended: their await chain, outermost first."""
    out = []
    for task in list(tasks)[:limit]:
        chain: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(chain) < MAX_AWAIT_CHAIN:
            frame = getattr(awaited, "cr_frame", None)
            if frame is None:
                chain.append(type(awaited).__name__)
                break
            chain.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            awaited = getattr(awaited, "cr_await", None)
        out.append(" > ".join(chain))
    return out


class Tasks:
    """A set of running tasks whose failures are logged, not lost."""

    def __init__(self) -> None:
        self.running: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self.running.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("engine task failed", exc_info=task.exception())

    async def finish(self, grace_seconds: float) -> None:
        """Let running tasks end within the grace period, then cancel the rest."""
        if self.running:
            await asyncio.wait(set(self.running), timeout=grace_seconds)
        for task in list(self.running):
            task.cancel()

    def __len__(self) -> int:
        return len(self.running)
