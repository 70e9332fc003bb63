"""The operator's clean-up on SIGTERM does not wait behind busy API threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import kopf

from mailpipe.operator.handlers import EXECUTOR_MEMO_KEY, shutdown
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


async def test_blocking_calls_still_queued_at_shutdown_are_dropped_not_run() -> None:
    """asyncio waits for the default executor's queue before the process exits: with
    1,000 pools, API calls of cancelled handlers held SIGTERM's exit 10 s."""
    loop = asyncio.get_running_loop()
    blocking = concurrent.futures.ThreadPoolExecutor(1, "blocking")
    loop.set_default_executor(blocking)
    release = threading.Event()
    ran: list[int] = []
    busy = loop.run_in_executor(None, release.wait)
    queued = [loop.run_in_executor(None, ran.append, i) for i in range(5)]
    memo = kopf.Memo()
    memo[MEMO_KEY] = OperatorState()
    memo[EXECUTOR_MEMO_KEY] = blocking
    try:
        await asyncio.wait_for(shutdown(memo=memo), SHUTDOWN_DEADLINE_SECONDS)
    finally:
        release.set()
    await busy  # the call in flight finishes
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert ran == []
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
