"""Which operator process may produce a fan-out (`fanout_lease`): two never at once."""

from __future__ import annotations

import pytest

from mailpipe.contracts.topics import namespace_space
from mailpipe.operator import fanout_lease, main
from mailpipe.operator.fanout_lease import Holder, may_produce

ME = Holder("mailpipe-operator-7d9-abc", 1, 1_000.0)
OTHER = Holder("mailpipe-operator-7d9-xyz", 1, 900.0)  # another replica
GONE = Holder(ME.pod, 41, 800.0)  # an earlier process of this pod
NOW = 5_000.0


def test_holder_round_trips_and_rejects_what_it_did_not_write() -> None:
    for h in (ME, Holder("host/with/slashes", 99, 1.5)):
        assert Holder.decode(h.encode()) == h
    assert Holder.decode("garbage") is None
    assert Holder.decode("pod/notapid/1.0") is None


@pytest.mark.parametrize(
    ("holder", "held_at", "alive", "allowed", "why"),
    [
        (None, None, set(), True, "no holder"),
        (ME, NOW - 1, set(), True, "held by this process"),
        (OTHER, NOW - 5, {1}, False, "held by operator process"),  # another replica, writing
        (OTHER, NOW - 199, {1}, False, "held by operator process"),
        (OTHER, NOW - 200, {1}, True, "has written nothing for 200 s"),  # silent long enough
        (GONE, NOW - 1, set(), True, "has ended"),  # restarted container, same pod
        (GONE, NOW - 1, {41}, False, "held by operator process"),  # a live process of this pod
        (OTHER, None, {1}, True, "older operator"),
    ],
    ids=[
        "free",
        "mine",
        "other-writing",
        "other-just-under",
        "other-silent",
        "same-pod-ended",
        "same-pod-alive",
        "legacy",
    ],
)
def test_may_produce(
    holder: Holder | None, held_at: float | None, alive: set[int], allowed: bool, why: str
) -> None:
    encoded = holder.encode() if holder else None
    ok, reason = may_produce(encoded, held_at, ME, NOW, alive.__contains__, takeover_seconds=200)
    assert ok is allowed
    assert why in reason


def test_a_crashed_replicas_fanout_resumes_as_soon_as_its_standby_acts() -> None:
    """A peering standby acts once the dead replica's keep-alive expired; its
    holder has then been silent at least that long. Before, the standby waited
    200 s more, because a frozen holder could still be producing; the broker now
    fences it (the campaign's transactional id), so the wait is shorter than
    the keep-alive and adds nothing to the hand-over."""
    assert fanout_lease.TAKEOVER_SECONDS < main.PEERING_LIFETIME_SECONDS
    silent_since_crash = NOW - main.PEERING_LIFETIME_SECONDS
    ok, why = may_produce(OTHER.encode(), silent_since_crash, ME, NOW, {1}.__contains__)
    assert ok, why


@pytest.mark.parametrize("namespace", ["mail", "fanout", "operator", "a"])
def test_a_fanouts_transactional_id_is_the_campaigns_and_no_tenants(namespace: str) -> None:
    """One id per campaign (a re-created one of the same name is another), every
    process producing it uses it (so the broker fences all but the latest), and
    no namespace's space holds it: a tenant's transactional-id ACL (prefix
    `mailpipe.<namespace>.`) never lets its relays fence the operator's fan-out."""
    tid = fanout_lease.transactional_id(namespace, "news", "uid-1")
    assert tid == fanout_lease.transactional_id(namespace, "news", "uid-1")
    assert tid != fanout_lease.transactional_id(namespace, "news", "uid-2")
    assert tid != fanout_lease.transactional_id(namespace, "news2", "uid-1")
    for space in ("mail", "fanout", "operator", "a"):
        assert not tid.startswith(namespace_space(space) + ".")
    assert tid.startswith(fanout_lease.TRANSACTIONAL_ID_PREFIX)
