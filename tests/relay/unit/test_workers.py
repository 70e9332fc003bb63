"""The worker threads DKIM signing runs on (`workers`): results and errors reach
the awaiting tasks, finished jobs wake the event loop once per batch, a
cancelled wait harms no other, and the threads end and start again."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mailpipe.relay.workers import WorkerThreads


async def test_results_and_errors_reach_their_tasks_from_the_threads() -> None:
    workers: WorkerThreads[int] = WorkerThreads(2, "t")
    ran_on: set[str] = set()

    def job(i: int) -> int:
        ran_on.add(threading.current_thread().name)
        if i == 3:
            raise ValueError("job 3")
        return i * i

    try:
        futures = [workers.submit(lambda i=i: job(i)) for i in range(8)]
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        workers.stop()
    assert [r if not isinstance(r, ValueError) else "error" for r in results] == [
        0, 1, 4, "error", 16, 25, 36, 49,
    ]  # fmt: skip
    assert ran_on and threading.main_thread().name not in ran_on


async def test_jobs_finished_while_the_loop_is_busy_wake_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    wakes: list[object] = []
    threadsafe = loop.call_soon_threadsafe

    def counted(callback: object, *args: object) -> object:
        wakes.append(callback)
        return threadsafe(callback, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    workers: WorkerThreads[int] = WorkerThreads(2, "t")
    finished = threading.Semaphore(0)

    def job(i: int) -> int:
        finished.release()
        return i

    try:
        futures = [workers.submit(lambda i=i: job(i)) for i in range(20)]
        for _ in range(20):  # the loop's thread stays busy until every job ran
            assert finished.acquire(timeout=10)
        assert await asyncio.gather(*futures) == list(range(20))
    finally:
        workers.stop()
    assert len(wakes) == 1


async def test_a_cancelled_wait_leaves_the_others_whole_and_threads_restart() -> None:
    workers: WorkerThreads[str] = WorkerThreads(1, "t")
    gate = threading.Event()
    try:
        blocked = workers.submit(lambda: gate.wait(10) and "late")
        after = workers.submit(lambda: "after")
        blocked.cancel()
        gate.set()
        assert await after == "after"
        workers.stop()
        assert await workers.submit(lambda: "again") == "again"  # new threads
    finally:
        gate.set()
        workers.stop()
