"""The short soak (issue 10, Deliver 9): the scenario of `bench/soak.py` at 10,000 records.

Two real relays, real Kafka, dnsmasq for MX and counting receivers on
loopback; 50 domains, five of them rate-limited so their limit binds, with
bounces, greylisting, suppressed addresses and poison records mixed in. The
full 200,000-record run is `make bench-soak`; this one runs in `make test`.
Guards ARCHITECTURE.md, "Nothing lost" (every record reaches exactly one final
disposition) over a long mixed load, and "Limits hold pool-wide" along the way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.soak import run_soak

from mailpipe.devstack.stack import Stack

# The soak (bench/soak.py) sets the stack's DNS records for its domains,
# replacing everyone's: it runs alone.
pytestmark = [pytest.mark.soak, pytest.mark.relay, pytest.mark.exclusive]

SHORT_RECORDS = 10_000
DOMAINS = 50
# 200 records a limited domain at 120/min take 100 s: the other 45 domains are
# done well before, so the limit binds for most of the run, and the run is long
# enough for a per-minute count to mean something.
SHORT_LIMIT_PER_MINUTE = 120.0
# A generous bound for the whole run on a loaded 2-core machine (it takes 1-2 min
# quiet); not a performance assertion: a stall is reported by the soak itself.
SOAK_TIMEOUT_SECONDS = 600

# What each poison shape's DLQ reason must name.
REASON_WORDS = {
    "nest": 2,  # 1,000 '[': "nested too deeply"
    "digits": 2,  # a 4,301-digit integer
    "utf-8": 2,  # a value that is not UTF-8
    "not_before": 2,  # not_before 1e308
}


@pytest.mark.timeout(SOAK_TIMEOUT_SECONDS + 120)
def test_every_record_has_exactly_one_final_disposition_through_a_mixed_load(
    devstack: Stack, tmp_path: Path
) -> None:
    report = run_soak(
        devstack,
        tmp_path,
        records=SHORT_RECORDS,
        domains=DOMAINS,
        relays=2,
        limit_per_minute=SHORT_LIMIT_PER_MINUTE,
        timeout_seconds=SOAK_TIMEOUT_SECONDS,
    )
    figures = report.as_dict()
    (tmp_path / "soak.json").write_text(json.dumps(figures, indent=2))
    # the figures in the failure itself: pytest's temporary directories do not last
    del figures["rss"], figures["final_lag"]
    summary = f"{report.problems()}\n{json.dumps(figures)}\n(all of it: {tmp_path}/soak.json)"

    assert report.stalled is None, f"{report.stalled}\n{summary}"
    # delivered + bounced + dlq + suppressed == produced, each as planned
    assert report.dispositions == report.expected, summary
    assert sum(report.dispositions.values()) == report.produced
    assert report.duplicate_events == 0 and report.duplicate_receipts == 0, summary
    assert report.delivered_without_receipt == 0 and report.receipts_without_event == 0
    # poison records in the DLQ, each with a reason that names its cause
    for word, copies in REASON_WORDS.items():
        assert sum(word in r for r in report.dlq_reasons) == copies, report.dlq_reasons
    # lag 0 and a committed offset on every partition the relays consume
    assert report.uncommitted == [], summary
    assert not any(report.final_lag.values()), {k: v for k, v in report.final_lag.items() if v}
    assert report.relay_exits == {"relay-0": 0, "relay-1": 0}, summary
    # the limit held pool-wide across both relays (ARCHITECTURE.md, "Limits hold pool-wide"), and
    # RSS stayed bounded
    assert report.problems() == [], summary
