"""The handlers' typed state: the fan-out checkpoint's status shape, the memo, `get_pool`."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest
from pydantic import ValidationError

from mailpipe.operator import handlers, kube_io
from mailpipe.operator.handlers.context import (
    OperatorState,
    get_pool,
    operator_state,
    pool_readiness,
    pool_waiting,
)
from mailpipe.operator.progress import CampaignPhase, FanoutCheckpoint, FanoutState


@pytest.mark.parametrize(
    ("checkpoint", "patch"),
    [
        (FanoutCheckpoint(state=FanoutState.PAUSED), {"state": "paused"}),
        (
            FanoutCheckpoint(state=FanoutState.WAITING_FOR_POOL, message="PoolNotFound"),
            {"state": "waitingForPool", "message": "PoolNotFound"},
        ),
        (
            FanoutCheckpoint(
                state=FanoutState.RUNNING,
                next_index=250,
                offsets={0: 7, 2: 9},
                enqueued=249,
                suppressed_before_send=1,
                total=1000,
                started_at="2026-01-01T00:00:00Z",
            ),
            {
                "state": "running",
                "nextIndex": 250,
                "offsets": {"0": 7, "2": 9},
                "enqueued": 249,
                "suppressedBeforeSend": 1,
                "total": 1000,
                "startedAt": "2026-01-01T00:00:00Z",
            },
        ),
        (
            FanoutCheckpoint(state=FanoutState.DONE, next_index=3, offsets=None, total=3),
            {"state": "done", "nextIndex": 3, "offsets": None, "total": 3},
        ),
    ],
    ids=["paused-keeps-checkpoint", "waiting", "running", "done-removes-offsets"],
)
def test_checkpoint_patches_only_what_was_set(
    checkpoint: FanoutCheckpoint, patch: dict[str, Any]
) -> None:
    assert checkpoint.patch() == patch


def test_checkpoint_reads_back_what_it_wrote() -> None:
    written = FanoutCheckpoint(state=FanoutState.RUNNING, next_index=5, offsets={1: 3}).patch()
    read = FanoutCheckpoint.from_status({"fanout": written})
    assert (read.state, read.next_index, read.offsets) == (FanoutState.RUNNING, 5, {1: 3})
    assert FanoutCheckpoint.from_status({}).is_empty and not read.is_empty


def test_status_strings_are_the_ones_status_always_showed() -> None:
    assert [s.value for s in FanoutState] == [
        "paused",
        "checkingAudience",  # new: the audience is checked while the pool is not Ready
        "waitingForPool",
        "running",
        "done",
        "failed",
    ]
    assert [p.value for p in CampaignPhase] == [
        "Pending",
        "Scheduled",
        "Sending",
        "Paused",
        "Completed",
        "Failed",
    ]


async def test_startup_puts_one_state_into_the_memo_every_resource_shares() -> None:
    memo = kopf.Memo()
    with pytest.raises(RuntimeError, match="startup"):
        operator_state(memo)
    await handlers.configure(settings=kopf.OperatorSettings(), memo=memo)
    state = operator_state(memo)
    assert isinstance(state, OperatorState)
    assert operator_state(copy.copy(memo)) is state  # kopf's per-resource memo is a shallow copy
    await handlers.shutdown(memo=memo)


POOL_SPEC = {
    "kafka": {"bootstrapServers": "k:9092", "topicPrefix": "mailpipe.ns.p"},
    "egressIPs": [{"address": "127.0.0.2", "helo": "a.sender.test"}],
}


def _pool(spec: dict[str, Any], conditions: list[dict[str, str]] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "news", "uid": "u1"}, "spec": spec}
    if conditions is not None:
        obj["status"] = {"conditions": conditions}
    return obj


@pytest.mark.parametrize(
    ("obj", "readiness"),
    [
        (None, (False, "PoolNotFound")),
        (_pool(POOL_SPEC, None), (False, "PoolNotReconciled")),
        (
            _pool({}, [{"type": "Ready", "status": "False", "reason": "InvalidSpec"}]),
            (False, "InvalidSpec"),
        ),
        (
            _pool(POOL_SPEC, [{"type": "Ready", "status": "True", "reason": "Reconciled"}]),
            (True, "Reconciled"),
        ),
    ],
    ids=["missing", "not-reconciled", "invalid", "ready"],
)
def test_get_pool_reads_readiness_without_parsing(
    obj: dict[str, Any] | None, readiness: tuple[bool, str]
) -> None:
    class OnePool(kube_io.Kube):
        def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
            return obj

    pool = get_pool(OnePool(), "ns", "news")
    assert pool_readiness(pool) == readiness
    if pool is not None and pool.obj["spec"]:
        assert pool.ref.uid == "u1" and pool.bootstrap == "k:9092"
        assert pool.topics.events == "mailpipe.ns.p.events"
    elif pool is not None:
        with pytest.raises(ValidationError):
            pool.spec  # noqa: B018 — parsing is the point


@pytest.mark.parametrize(
    ("obj", "said"),
    [
        (None, "pool news does not exist (PoolNotFound)"),
        (_pool(POOL_SPEC, None), "pool news is not reconciled yet (PoolNotReconciled)"),
        (
            _pool(
                POOL_SPEC,
                [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "RelaysUnavailable",
                        "message": "0/2 relays available",
                    }
                ],
            ),
            "pool news is not Ready: RelaysUnavailable: 0/2 relays available",
        ),
        (
            _pool({}, [{"type": "Ready", "status": "False", "reason": "InvalidSpec"}]),
            "pool news is not Ready: InvalidSpec",
        ),
    ],
    ids=["missing", "not-reconciled", "relays", "no-message"],
)
def test_a_waiting_campaign_says_why_in_the_pools_words(
    monkeypatch: pytest.MonkeyPatch, obj: dict[str, Any] | None, said: str
) -> None:
    kube = kube_io.Kube()
    monkeypatch.setattr(kube, "get_custom", lambda plural, ns, name: obj)
    assert pool_waiting("news", get_pool(kube, "ns", "news")) == said
