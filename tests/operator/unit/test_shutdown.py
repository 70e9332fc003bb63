"""The operator's clean-up on SIGTERM does not wait behind busy API threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import kopf

from mailpipe.operator.handlers import shutdown
from mailpipe.operator.handlers.context import MEMO_KEY, OperatorState

SHUTDOWN_DEADLINE_SECONDS = 10.0  # a deadline for the condition, not a measured duration


async def test_the_clean_up_runs_while_every_default_executor_thread_is_busy() -> None:
    """At shutdown with 1,000 pools every thread of the default executor was in an
    API call to a slow apiserver; the clean-up's closers queued behind them."""
    loop = asyncio.get_running_loop()
    busy = concurrent.futures.ThreadPoolExecutor(2, "busy")
    loop.set_default_executor(busy)
    release = threading.Event()
    blocked = [loop.run_in_executor(None, release.wait) for _ in range(2)]
    memo = kopf.Memo()
    memo[MEMO_KEY] = OperatorState()
    try:
        await asyncio.wait_for(shutdown(memo=memo), SHUTDOWN_DEADLINE_SECONDS)
    finally:
        release.set()
        await asyncio.gather(*blocked)
