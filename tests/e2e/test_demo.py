"""End to end: the demo's whole run, smaller, with its per-domain and per-IP numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailpipe.devstack.demo import Demo, Plan
from mailpipe.devstack.stack import Stack

pytestmark = pytest.mark.e2e


def test_campaign_end_to_end(devstack: Stack, tmp_path: Path) -> None:
    plan = Plan.make(200)
    lines: list[str] = []
    demo = Demo(devstack, tmp_path, plan, lines.append)
    ok = demo.run()
    report = "\n".join(lines)
    assert ok, report
    failed = [what for good, what in demo.checks if not good]
    assert failed == [], report
    # The numbers the summary prints, checked here against the plan itself.
    assert len(plan.bounce) == 10 and len(plan.defer) == 10 and len(plan.suppressed) == 2
    per_ip = {ip: 0 for ip in ("127.0.0.2", "127.0.0.3")}
    per_domain: dict[str, int] = {}
    for domain, rx in demo.receivers.items():
        for m in rx.messages():
            per_ip[m.peer] += len(m.rcpt_tos)
            per_domain[domain] = per_domain.get(domain, 0) + len(m.rcpt_tos)
    assert per_domain == {"alpha.test": 50, "beta.test": 40, "gamma.test": 50, "delta.test": 48}
    assert 0 < per_ip["127.0.0.3"] <= plan.warmup_cap == 20
    assert per_ip["127.0.0.2"] + per_ip["127.0.0.3"] == 188
