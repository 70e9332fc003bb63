"""The soak's accounting and RSS verdict (bench/soak_model.py, bench/soak_report.py).

The soak passes only if these catch what they exist to catch: a lost record,
a duplicate, a record counted twice, a rate over its limit, a leak."""

from __future__ import annotations

from collections import Counter

from bench.soak_model import (
    RSS_CEILING_MB,
    Plan,
    Tally,
    duplicate_receipts,
    max_per_window,
    rss_verdict,
)
from bench.soak_report import SoakReport

PLAN = Plan(records=10_000, domains=50, limited=5)


def _report(**fields: object) -> SoakReport:
    expected = dict(PLAN.expected())
    base: dict[str, object] = {
        "records": PLAN.records,
        "produced": PLAN.produced,
        "domains": 50,
        "limited_domains": PLAN.limited_domains,
        "limit_per_minute": 240.0,
        "limit_lanes": 10,
        "relays": 2,
        "expected": expected,
        "dispositions": dict(expected),
    }
    return SoakReport(**{**base, **fields})  # type: ignore[arg-type]


def test_the_plan_accounts_for_every_record_it_produces() -> None:
    expected = PLAN.expected()
    assert sum(expected.values()) == PLAN.produced
    assert expected["dlq"] == 8 and expected["bounced"] > 4 and expected["suppressed"] > 0
    recipients = [PLAN.recipient(i) for i in range(PLAN.records)]
    assert len(set(recipients)) == PLAN.records  # receipts can be counted per recipient
    assert {r.rpartition("@")[2] for r in recipients} == set(PLAN.domain_names)


def test_a_failed_record_with_its_dlq_copy_counts_once_and_a_duplicate_is_seen() -> None:
    tally = Tally()
    tally.add_event({"message_id": "a", "disposition": "deferred"})
    tally.add_event({"message_id": "a", "disposition": "delivered", "domain": "d", "time": 1.0})
    tally.add_event({"message_id": "b", "disposition": "failed"})
    tally.add_dlq({"reason": "relay_error"})  # b's copy
    tally.add_dlq({"reason": "not JSON: nested too deeply"})  # a record that never decoded
    assert tally.accounted == 3
    assert tally.dispositions() == Counter({"delivered": 1, "dlq": 2})
    assert tally.duplicate_events() == 0
    tally.add_event({"message_id": "a", "disposition": "delivered", "domain": "d", "time": 2.0})
    assert tally.duplicate_events() == 1
    assert duplicate_receipts(Counter({"u@d": 2, "v@d": 1})) == 1


def test_every_broken_promise_is_a_problem() -> None:
    assert _report().problems() == []
    lost = dict(PLAN.expected())
    lost["delivered"] -= 1
    broken = {
        "lost": _report(dispositions=lost),
        "duplicate": _report(duplicate_events=1),
        "lag": _report(final_lag={"t.outbound/3": 12}),
        "uncommitted": _report(uncommitted=["t.delay.5s/0"]),
        "stalled": _report(stalled="no new disposition"),
        "over the limit": _report(limited_max_per_minute={"soak0.test": 264}),
        "relay crashed": _report(relay_exits={"relay-0": 1}),
        "no reason": _report(dlq_reasons=[""]),
    }
    for what, report in broken.items():
        assert report.problems(), what


def test_the_rss_verdict_tells_a_plateau_from_a_leak() -> None:
    warm_up = [(float(t), 40.0 + 4 * t) for t in range(20)]  # 40 -> 116 MiB while filling
    plateau = warm_up + [(float(t), 118.0 + (t % 3)) for t in range(20, 200)]
    leak = warm_up + [(float(t), 116.0 + 0.5 * (t - 20)) for t in range(20, 200)]
    assert rss_verdict(plateau).steady
    assert rss_verdict(plateau).within_ceiling
    assert not rss_verdict(leak).steady  # +45 MiB over the second half
    assert not rss_verdict([(0.0, RSS_CEILING_MB + 1)]).within_ceiling
    report = _report(rss={"relay-0": {**vars(rss_verdict(leak)), "curve": leak}})
    assert any("second half" in p for p in report.problems())


def test_the_rate_is_counted_per_minute_as_a_receiver_counts_it() -> None:
    steady = [i * 0.25 for i in range(600)]  # 240/min for 150 s
    assert max_per_window(steady) == 240
    bunched = steady[:100] + [25.0] * 20 + steady[100:]  # 20 more, all at once
    assert max_per_window(bunched) > 250
    assert max_per_window([]) == 0
