"""Worker threads for the CPU work that releases the GIL (DKIM's RSA step and
body hash), handing results back to the event loop in batches.

Why not `loop.run_in_executor`: it wakes the loop once per job (a future
chained across threads, a byte on the loop's self-pipe, two callbacks), and at
a signature per message those wake-ups and the GIL hand-overs that come with
them cost the loop's thread about a fifth of what signing there cost. Here a
finished job's result joins a list and the loop is woken only when no wake-up
is pending already, as the Kafka sink hands over its acknowledgements
(`kafka.sink`): measured on 2 cores, 20 lanes signing, 60-70 us instead of
about 85 us of the loop's CPU a signed message. Each thread takes one job at a
time, so the threads sign in parallel. `LoopHandOver` is that batching on its
own: the Kafka sink resolves its acknowledgements through it too.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_STOP = None  # what tells a thread to end

Job = tuple[Callable[[], T], "asyncio.Future[T]"]


class WorkerThreads(Generic[T]):
    """`threads` daemon threads running `submit`ted callables for the running
    event loop; started by the first job, ended by `stop` (a later job, on the
    same loop or another, starts new ones)."""

    def __init__(self, threads: int, name: str) -> None:
        self._size = threads
        self._name = name
        self._crew: _Crew[T] | None = None

    def submit(self, job: Callable[[], T]) -> asyncio.Future[T]:
        """Run `job` on a worker thread; the future gets its result or exception."""
        loop = asyncio.get_running_loop()
        if self._crew is None or self._crew.loop is not loop:
            self.stop()
            self._crew = _Crew(loop, self._size, self._name)
        return self._crew.submit(job)

    def stop(self) -> None:
        """End the threads once the jobs queued are done; nothing waits for them."""
        if self._crew is not None:
            self._crew.stop()
            self._crew = None


class LoopHandOver(Generic[T]):
    """Resolves futures of one event loop from other threads, one wake-up of the
    loop per batch: a result joins a list, and the loop is woken only when no
    wake-up is pending already. A future whose task was cancelled meanwhile
    (shutdown, a tarpit cut) is passed over."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._done: list[tuple[asyncio.Future[T], T | None, BaseException | None]] = []
        self._lock = threading.Lock()
        self._wake_pending = False

    def resolve(
        self, future: asyncio.Future[T], result: T | None, error: BaseException | None
    ) -> None:
        """From any thread: `future` gets `result`, or `error` when not None.
        RuntimeError when the loop is closed (nobody waits any more)."""
        with self._lock:
            self._done.append((future, result, error))
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self.loop.call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._wake_pending = False
        for future, result, error in done:
            if future.done():
                continue
            if error is None:
                future.set_result(result)  # type: ignore[arg-type]
            else:
                future.set_exception(error)


class _Crew(Generic[T]):
    """The threads of one event loop, and the results they have for it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int, name: str) -> None:
        self.loop = loop
        self._jobs: queue.SimpleQueue[Job[T] | None] = queue.SimpleQueue()
        self._results: LoopHandOver[T] = LoopHandOver(loop)
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self.loop.create_future()
        self._jobs.put((job, future))
        return future

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(_STOP)

    def _work(self) -> None:
        while (item := self._jobs.get()) is not _STOP:
            job, future = item
            try:
                result, error = job(), None
            except BaseException as exc:  # handed to the awaiting task, as an executor does
                result, error = None, exc
            try:
                self._results.resolve(future, result, error)
            except RuntimeError:  # the loop closed meanwhile: nobody waits any more
                return
