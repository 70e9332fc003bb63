"""One task writes every pool's warm-up status (`handlers.warmup.status_loop`), not
a kopf timer per pool: 1,000 pools ticking every 15 s were a handler call and a
log line each, 67 a second. The loop must still look at each pool once it is
idle and then at its interval, write only what changed, say a newly paused IP
once (a Warning and the condition, with the IPs in the same write), and leave
alone a pool not reconciled yet or gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import kopf
import pytest

from mailpipe.contracts.warmup import IPReport, WarmupLedger
from mailpipe.operator.handlers import warmup
from mailpipe.operator.handlers.context import OperatorState

DEADLINE_SECONDS = 10.0


async def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


class Ledger:
    """The reports a ledger would give: one IP, warming, what was sent today."""

    def __init__(self) -> None:
        self.sent = 0
        self.paused: str | None = None

    def report(self, now: float) -> list[IPReport]:
        return [IPReport("10.0.0.5", True, 3, 100, self.sent, self.paused, 1.0e9)]


class Kube:
    def __init__(self) -> None:
        self.merged: list[tuple[str, dict[str, Any]]] = []
        self.conditional: list[tuple[str, list[dict[str, Any]]]] = []

    def patch_status(self, plural: str, namespace: str, name: str, status: Any) -> None:
        self.merged.append((name, status))

    def json_patch_status(self, plural: str, namespace: str, name: str, ops: Any) -> None:
        self.conditional.append((name, ops))


def _body(name: str, reconciled: bool = True) -> dict[str, Any]:
    status = {"observedGeneration": 1} if reconciled else {}
    meta = {"name": name, "namespace": "ns", "uid": f"u-{name}", "resourceVersion": "5"}
    return {"apiVersion": "mailpipe.io/v1alpha1", "kind": "SendingPool", "metadata": meta,
            "status": status}  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def warnings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    said: list[str] = []
    monkeypatch.setattr(kopf, "warn", lambda _, reason, message: said.append(reason))
    monkeypatch.setattr(warmup, "STATUS_SCAN_SECONDS", 0.001)
    return said


def _state(pools: dict[str, dict[str, Any]]) -> tuple[OperatorState, Kube, dict[str, Ledger]]:
    kube = Kube()
    state = OperatorState(kube=kube)  # type: ignore[arg-type]
    ledgers = {}
    for name, body in pools.items():
        ledgers[name] = Ledger()
        state.ledgers[f"ns/{name}"] = cast(WarmupLedger, ledgers[name])
        state.warmup_views[f"ns/{name}"] = warmup.PoolView(body, changed_at=0.0)
    return state, kube, ledgers


async def test_each_pool_once_idle_then_at_its_interval_and_only_what_changed(
    warnings: list[str],
) -> None:
    state, kube, ledgers = _state({n: _body(n) for n in ("a", "b", "c")})
    clock = Clock()
    task = asyncio.create_task(warmup.status_loop(state, clock))
    try:
        await asyncio.sleep(0.05)
        assert kube.merged == []  # changed 0 s ago: not idle yet
        clock.now = warmup.WARMUP_STATUS_IDLE_SECONDS + 1
        await wait_for(lambda: len(kube.merged) == 3)
        assert {name for name, _ in kube.merged} == {"a", "b", "c"}
        assert kube.merged[0][1]["warmupSummary"] == "10.0.0.5 d3 0/100 tried"
        clock.now += warmup.WARMUP_STATUS_INTERVAL_SECONDS  # its turn: nothing new
        await asyncio.sleep(0.05)
        assert len(kube.merged) == 3
        ledgers["b"].sent = 7
        clock.now += warmup.WARMUP_STATUS_INTERVAL_SECONDS
        await wait_for(lambda: len(kube.merged) == 4)
        assert kube.merged[3][0] == "b" and kube.merged[3][1]["ips"][0]["sentToday"] == 7
        assert warnings == [] and kube.conditional == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_newly_paused_ip_is_said_once_with_its_condition_and_ips(
    warnings: list[str],
) -> None:
    state, kube, ledgers = _state({"a": _body("a")})
    ledgers["a"].paused = "bounce rate 12.0% over 5.0%"
    clock = Clock()
    clock.now = warmup.WARMUP_STATUS_IDLE_SECONDS + 1
    task = asyncio.create_task(warmup.status_loop(state, clock))
    try:
        await wait_for(lambda: len(kube.conditional) == 1)
        ops = kube.conditional[0][1]
        assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "5"}
        written = {op["path"]: op["value"] for op in ops[1:]}
        (paused,) = [c for c in written["/status/conditions"] if c["type"] == warmup.PAUSED]
        assert paused["status"] == "True"
        assert written["/status/ips"][0]["pausedReason"] == "bounce rate 12.0% over 5.0%"
        assert warnings == ["IPPaused"]
        clock.now += warmup.WARMUP_STATUS_INTERVAL_SECONDS
        await asyncio.sleep(0.05)
        assert warnings == ["IPPaused"] and len(kube.conditional) == 1  # said once
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_pool_not_reconciled_or_gone_is_not_written(warnings: list[str]) -> None:
    state, kube, _ = _state({"new": _body("new", reconciled=False), "gone": _body("gone")})
    del state.warmup_views["ns/gone"]  # its DELETED event
    clock = Clock()
    clock.now = warmup.WARMUP_STATUS_IDLE_SECONDS + 1
    task = asyncio.create_task(warmup.status_loop(state, clock))
    try:
        await asyncio.sleep(0.05)
        assert kube.merged == [] and kube.conditional == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_pool_event_keeps_its_view_for_the_loop(warnings: list[str]) -> None:
    state = OperatorState()
    memo = kopf.Memo()
    memo["mailpipe"] = state
    body = _body("a")  # no spec: nothing to follow, but the view is kept
    try:
        await warmup.track_pool_warmup(type="ADDED", body=body, memo=memo)
        assert state.warmup_views["ns/a"].body == body
        assert state.warmup_task is not None
        await warmup.track_pool_warmup(type="DELETED", body=body, memo=memo)
        assert "ns/a" not in state.warmup_views
    finally:
        await warmup.stop_status_loop(state)
