"""The fault suite's counting helper counts what each fault test asserts on."""

from __future__ import annotations

from tests.faults.tally import tally


def test_tally_counts_copies_losses_and_final_dispositions() -> None:
    sent = ["a@x.test", "b@x.test", "c@x.test", "d@x.test"]
    received = ["a@x.test", "A@x.test", "b@x.test", "other@y.test"]
    events = [
        {"recipient": "a@x.test", "disposition": "deferred", "reason": "network_or_routing"},
        {"recipient": "a@x.test", "disposition": "delivered"},
        {"recipient": "b@x.test", "disposition": "delivered"},
        {"recipient": "b@x.test", "disposition": "delivered"},
        {"recipient": "c@x.test", "disposition": "deferred", "reason": "network_or_routing"},
        {"recipient": "d@x.test", "disposition": "bounced"},
        {"recipient": "other@y.test", "disposition": "delivered"},
    ]
    t = tally(sent, received, events)
    assert (t.sent, t.delivered, t.duplicated, t.lost) == (4, 2, 1, 2)
    assert (t.stalled, t.finals_twice, t.deferred) == (1, 1, 2)  # c has no final word yet
    assert dict(t.reasons) == {"network_or_routing": 2}
