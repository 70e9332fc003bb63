"""The child guard's API reads stay within a fixed budget, whatever the number of
pools (`child_drift.RecheckPace`): 1,000 pools reading three children every 5 s
kept 28 of the operator's 32 API threads busy while new pools waited minutes
for their first reconcile (bench/operator.py)."""

from __future__ import annotations

import copy
import itertools
from collections import defaultdict
from typing import Any, cast

import pytest

from mailpipe.operator import child_drift, kube_io
from mailpipe.operator.child_drift import CHILD_READS_PER_SECOND, RecheckPace
from mailpipe.operator.handlers import children
from mailpipe.operator.handlers.context import OperatorState

TICK_SECONDS = 5.0  # the floor between two checks of one pool


@pytest.mark.parametrize(
    ("pools", "seconds"),
    [(1, 5.0), (66, 5.0), (100, 7.5), (1000, 75.0), (1200, 90.0)],
    ids=["one", "66-still-the-floor", "100", "1000", "1200"],
)
def test_the_interval_stretches_past_the_read_budget(pools: int, seconds: float) -> None:
    assert RecheckPace(TICK_SECONDS).interval(pools) == pytest.approx(seconds)


def test_1200_pools_ticking_every_5_s_read_within_the_budget() -> None:
    pace = RecheckPace(TICK_SECONDS)
    pools = 1200
    reads: dict[str, list[float]] = defaultdict(list)
    for step in range(int(900 / TICK_SECONDS)):
        for i in range(pools):
            # pools created over the first minute, each with its own timer phase
            start = (i % 60) + (i % 5) / 5
            now = start + step * TICK_SECONDS
            if pace.due(f"ns/p{i}", pools, now):
                reads[f"ns/p{i}"].append(now)
    interval = pace.interval(pools)
    for times in reads.values():
        assert all(b - a >= interval for a, b in itertools.pairwise(times))
    late = [t for times in reads.values() for t in times if 120 <= t < 840]
    assert len(late) * child_drift.READS_PER_POOL / 720 <= CHILD_READS_PER_SECOND


def test_a_pool_seen_again_after_the_floor_is_read_when_few_are_guarded() -> None:
    pace = RecheckPace(TICK_SECONDS)
    assert not pace.due("ns/a", 3, 100.0)  # just reconciled: its children are fresh
    assert not pace.due("ns/a", 3, 104.0)
    assert pace.due("ns/a", 3, 105.0)
    assert not pace.due("ns/a", 3, 106.0)
    pace.forget("ns/a")
    assert not pace.due("ns/a", 3, 200.0)


class CountingKube:
    """Serves every child as it was rendered, counting the reads."""

    def __init__(self, child: dict[str, Any]) -> None:
        self.child = child
        self.reads = 0

    def read_child(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        self.reads += 1
        return copy.deepcopy(self.child)


async def test_a_thousand_pools_guarded_together_do_not_all_read_every_tick() -> None:
    child = {
        "kind": "ConfigMap",
        "metadata": {"name": "mailpipe-relay-p", "namespace": "ns", "labels": {"a": "b"}},
        "data": {"relay.yaml": "x"},
    }
    kube = CountingKube(child)
    state = OperatorState(kube=cast(kube_io.Kube, kube))
    keys = [f"ns/p{i:04d}" for i in range(1000)]
    for key in keys:
        state.rendered[key] = [child, child, child]
    clock = [1000.0]

    async def tick() -> int:
        before = kube.reads
        for key in children.due(state, clock[0]):
            assert await children.guard(state, key) == []
        return kube.reads - before

    assert await tick() == 0  # first seen: just reconciled
    clock[0] += TICK_SECONDS
    assert await tick() == 0  # 3,000 reads every 5 s was the cost
    clock[0] += state.child_pace.interval(len(keys))
    assert await tick() == 3000  # each pool once per stretched interval
