"""The WARMUP printer column says what it counts."""

from __future__ import annotations

from mailpipe.contracts.warmup import IPReport
from mailpipe.operator.handlers.warmup import warmup_summary


def report(
    address: str, warming: bool, sent: int, cap: int | None, paused: str | None = None
) -> IPReport:
    return IPReport(address, warming, 1, cap, sent, paused)


def test_the_column_counts_tries_and_says_so() -> None:
    """Issue 18: the demo's WARMUP showed `100/100` beside a summary of 94 delivered;
    the cap counts every recipient tried (bounced and deferred too)."""
    reports = [report("127.0.0.2", False, 800, None), report("127.0.0.3", True, 100, 100)]
    assert warmup_summary(reports) == "127.0.0.3 d1 100/100 tried"


def test_a_paused_ip_shows_why_and_a_warm_pool_says_warm() -> None:
    paused = report("192.0.2.21", True, 40, 100, "bounce rate 12.0% over 5.0%")
    assert warmup_summary([paused]) == "192.0.2.21 PAUSED (bounce rate 12.0% over 5.0%)"
    assert warmup_summary([report("192.0.2.20", False, 5, None)]) == "warm"
