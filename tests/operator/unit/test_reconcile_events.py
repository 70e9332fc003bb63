"""The writes and watch events a new pool costs: when 1,000 pools are created
together, each status write is a watch event every sendingpool handler runs
for, and each re-read waits behind every other pool's calls on the API server.

A new pool's first reconcile writes, in its one status write, what the scale
handler and the warm-up status used to write after it (`status.replicas`,
`status.selector`, `status.ips`); the event of the relay Deployment that
reconcile wrote itself reconciles nothing again; and a pool's status writes
do not make the warm-up handler parse its unchanged spec again."""

from __future__ import annotations

import copy
import time
from typing import Any, cast

import kopf
import pytest

from mailpipe.contracts.warmup import WarmupLedger
from mailpipe.operator.handlers import pool, relays, scale, warmup
from mailpipe.operator.handlers.context import MEMO_KEY, OperatorState, parse_pool_spec
from mailpipe.operator.kafka_io import Admins
from mailpipe.operator.pool import build_relay_config

from .test_reconcile_calls import POLICY, MemoryKube, Topics, _new_pool


@pytest.fixture(autouse=True)
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The Events the handlers post (kopf posts only inside its running operator)."""
    posted: list[str] = []
    for kind in ("info", "warn"):
        monkeypatch.setattr(kopf, kind, lambda _, reason, **__: posted.append(reason))
    return posted


class VersionedKube(MemoryKube):
    """MemoryKube whose every write gets a new resourceVersion, as the API server's."""

    def __init__(self, pool_obj: dict[str, Any]) -> None:
        super().__init__(pool_obj)
        self.version = 100

    def _call(self, kind: str, verb: str, *args: Any, **kwargs: Any) -> Any:
        if verb == "patch" and not kwargs.get("dry_run"):
            self.version += 1
            args = (args[0], args[1], copy.deepcopy(args[2]), *args[3:])
            args[2]["metadata"]["resourceVersion"] = str(self.version)
        return super()._call(kind, verb, *args, **kwargs)


def _state(kube: MemoryKube) -> OperatorState:
    state = OperatorState(kube=kube, policy=POLICY)
    state.admins = cast(Admins, Topics())
    return state


def _memo(state: OperatorState) -> kopf.Memo:
    memo = kopf.Memo()
    memo[MEMO_KEY] = state
    return memo


def _deployment(kube: MemoryKube) -> dict[str, Any]:
    return next(v for (kind, _), v in kube.children.items() if kind == "Deployment")


def _ledger(body: dict[str, Any]) -> WarmupLedger:
    ref = pool.PoolRef("news", "ns", "u1")
    return WarmupLedger(build_relay_config(ref, parse_pool_spec(body["spec"])), relay_id="operator")


async def test_a_new_pools_one_status_write_has_its_scale_and_warmup() -> None:
    kube = VersionedKube(_new_pool())
    state = _state(kube)
    state.ledgers["ns/news"] = _ledger(kube.pool)
    await pool.reconcile(state, "ns", "news", ensure_topics=True)
    assert [c for c in kube.calls if c[0] == "patch-status"] == [
        ("patch-status", "SendingPool", "news")
    ]
    status = kube.pool["status"]
    assert status["replicas"] == 0
    assert status["selector"] == scale.scale_status(_deployment(kube))["selector"]
    assert [(ip["address"], ip["warming"]) for ip in status["ips"]] == [("10.0.0.5", False)]
    assert status["warmupSummary"] == "warm"
    # the warm-up status loop then has nothing to write for it
    assert warmup.report(state, "ns/news", kube.pool, time.time()) == warmup.Report()


async def test_the_event_of_the_deployment_a_reconcile_wrote_reconciles_nothing() -> None:
    kube = VersionedKube(_new_pool())
    state = _state(kube)
    await pool.reconcile(state, "ns", "news", ensure_topics=True)
    written = _deployment(kube)["metadata"]["resourceVersion"]
    kube.calls.clear()
    await relays.sync(state, "ns", "news", deployment_version=written)
    assert kube.calls == []
    # another version of it (the controller's status, an edit) is read as before
    await relays.sync(state, "ns", "news", deployment_version=str(int(written) + 1))
    assert ("get", "SendingPool", "news") in kube.calls


async def test_the_scale_handler_skips_the_version_the_reconcile_reported() -> None:
    kube = VersionedKube(_new_pool())
    state = _state(kube)
    await pool.reconcile(state, "ns", "news", ensure_topics=True)
    body = copy.deepcopy(_deployment(kube))
    body["metadata"]["ownerReferences"][0]["controller"] = True
    kube.calls.clear()

    async def event(version: str) -> None:
        body["metadata"]["resourceVersion"] = version
        await scale.relay_deployment_scale(
            body=body, meta=body["metadata"], namespace="ns", type="MODIFIED", memo=_memo(state)
        )

    await event(body["metadata"]["resourceVersion"])
    assert kube.calls == []
    body["status"] = {"replicas": 3}
    await event("999")
    assert ("get", "SendingPool", "news") in kube.calls
    assert kube.pool["status"]["replicas"] == 3


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each parse of a pool's spec by the warm-up handler."""
    seen: list[str] = []
    real = warmup.parse_pool_spec

    def counted(spec: Any) -> Any:
        seen.append("parse")
        return real(spec)

    monkeypatch.setattr(warmup, "parse_pool_spec", counted)
    return seen


async def test_status_writes_do_not_make_the_warmup_handler_reparse_the_spec(
    parses: list[str],
) -> None:
    state = OperatorState(policy=POLICY)
    state.hub.follow = lambda *_, **__: None  # type: ignore[method-assign]
    state.hub.forget = lambda *_, **__: None  # type: ignore[method-assign]
    memo = _memo(state)
    body = _new_pool()
    body["metadata"]["uid"] = "u1"
    for status in ({}, {"observedGeneration": 1}, {"ips": []}):
        body["status"] = status
        await warmup.track_pool_warmup(type="MODIFIED", body=body, memo=memo)
    assert len(parses) == 1 and "ns/news" in state.ledgers
    body["metadata"]["generation"] = 2  # a new spec: parsed and followed again
    body["spec"]["egressIPs"].append({"address": "10.0.0.6", "helo": "mta2.example.com"})
    await warmup.track_pool_warmup(type="MODIFIED", body=body, memo=memo)
    assert len(parses) == 2
    assert {r.address for r in state.ledgers["ns/news"].report(time.time())} == {
        "10.0.0.5",
        "10.0.0.6",
    }
    await warmup.track_pool_warmup(type="DELETED", body=body, memo=memo)
    assert "ns/news" not in state.ledgers


async def test_the_reconcile_tells_the_events_reader_of_the_events_topic_it_created() -> None:
    kube = VersionedKube(_new_pool())
    state = _state(kube)
    told: list[tuple[str, str, int]] = []
    state.hub.created = lambda *args: told.append(args)  # type: ignore[method-assign]
    await pool.reconcile(state, "ns", "news", ensure_topics=True)
    spec = parse_pool_spec(kube.pool["spec"])
    events = pool.topics(pool.PoolRef("news", "ns", "u1"), spec).events
    assert told == [("kafka.test:9092", events, spec.kafka.partitions)]
