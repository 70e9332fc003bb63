"""One task guards every pool's children (`handlers.children.guard_loop`), not a
kopf timer per pool: 1,200 pools ticking every 5 s were 44% of the event loop's
busy time. The loop must still visit every pool, outlive one pool's failing
check, and let go of pools that are gone."""

from __future__ import annotations

import asyncio
import copy
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import pytest

from mailpipe.operator import kube_io
from mailpipe.operator.child_drift import RecheckPace
from mailpipe.operator.handlers import children
from mailpipe.operator.handlers.context import OperatorState
from mailpipe.operator.models import SendingPoolSpec
from mailpipe.operator.pool import PoolRef, build_children

DEADLINE_SECONDS = 10.0


async def wait_for(condition: Callable[[], bool], timeout_seconds: float) -> None:
    """Until `condition`, yielding to the loop under test; fails at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _rendered(name: str) -> list[dict[str, Any]]:
    spec = SendingPoolSpec.model_validate(
        {
            "kafka": {"bootstrapServers": "kafka:9092"},
            "egressIPs": [{"address": "10.0.0.5", "helo": "mta1.example.com"}],
        }
    )
    return build_children(PoolRef(name, "ns", f"uid-{name}"), spec)[1]


class ServedKube:
    """Serves each child as rendered (nothing to put back), counting reads per pool;
    the pools in `failing` answer with an error."""

    def __init__(self, state: OperatorState) -> None:
        self.state = state
        self.reads: Counter[str] = Counter()
        self.failing: set[str] = set()

    def read_child(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        pool = name.rsplit("-", 1)[1]
        if pool in self.failing:
            raise ConnectionError("API server away")
        self.reads[pool] += 1
        rendered = self.state.rendered[f"{namespace}/{pool}"]
        return copy.deepcopy(next(c for c in rendered if c["metadata"]["name"] == name))


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> OperatorState:
    monkeypatch.setattr(children, "SCAN_SECONDS", 0.01)
    st = OperatorState(child_pace=RecheckPace(floor_seconds=0.05, reads_per_second=1e4))
    st.kube = cast(kube_io.Kube, ServedKube(st))
    return st


async def _running(state: OperatorState) -> asyncio.Task[None]:
    children.start_guard(state)
    assert state.child_guard is not None
    return state.child_guard


async def test_the_one_loop_reads_every_pools_children(state: OperatorState) -> None:
    kube = cast(ServedKube, state.kube)
    names = [f"p{i}" for i in range(20)]
    for name in names:
        state.rendered[f"ns/{name}"] = _rendered(name)
    task = await _running(state)
    children.start_guard(state)  # a second pool's handler starts no second loop
    assert state.child_guard is task
    try:
        await wait_for(lambda: all(kube.reads[n] >= 2 for n in names), DEADLINE_SECONDS)
    finally:
        await children.stop_guard(state)
    assert task.cancelled() and state.child_guard is None


async def test_a_pool_whose_check_fails_does_not_stop_the_others(state: OperatorState) -> None:
    kube = cast(ServedKube, state.kube)
    for name in ("bad", "good"):
        state.rendered[f"ns/{name}"] = _rendered(name)
    kube.failing.add("bad")
    await _running(state)
    try:
        await wait_for(lambda: kube.reads["good"] >= 3, DEADLINE_SECONDS)
        kube.failing.clear()  # the API server is back: the pool's next turn reads it
        await wait_for(lambda: kube.reads["bad"] >= 1, DEADLINE_SECONDS)
    finally:
        await children.stop_guard(state)


async def test_a_pool_that_is_gone_leaves_the_loop(state: OperatorState) -> None:
    kube = cast(ServedKube, state.kube)
    for name in ("stays", "goes"):
        state.rendered[f"ns/{name}"] = _rendered(name)
    await _running(state)
    try:
        await wait_for(lambda: kube.reads["goes"] >= 1, DEADLINE_SECONDS)
        async with state.pool_lock("ns/goes"):  # as the pool's deletion does
            state.rendered.pop("ns/goes")
        read = kube.reads["goes"]
        seen = kube.reads["stays"]
        await wait_for(lambda: kube.reads["stays"] >= seen + 3, DEADLINE_SECONDS)
        assert kube.reads["goes"] == read
        assert children.due(state, 1e9) == ["ns/stays"]
        assert "ns/goes" not in state.child_pace._last
    finally:
        await children.stop_guard(state)


def test_the_warning_names_the_pool_its_children_belong_to() -> None:
    body = children._pool_body(_rendered("news"))
    assert body["kind"] == "SendingPool" and body["apiVersion"] == "mailpipe.io/v1alpha1"
    assert dict(body["metadata"]) == {"name": "news", "namespace": "ns", "uid": "uid-news"}
