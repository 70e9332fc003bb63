"""End to end: the demo's whole run, smaller, with its per-domain and per-IP numbers
and what comes back (DSNs, a complaint, a one-click unsubscribe, an out-of-office
reply, a follow-up campaign that skips the suppressed)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from mailpipe.devstack.demo import Demo, Plan
from mailpipe.devstack.stack import Stack

# The demo installs its chart into a fixed namespace, with an operator watching
# every namespace, and sets the stack's DNS records: it runs alone.
pytestmark = [pytest.mark.e2e, pytest.mark.exclusive]


def test_campaign_end_to_end(devstack: Stack, tmp_path: Path) -> None:
    plan = Plan.make(200)
    lines: list[str] = []
    demo = Demo(devstack, tmp_path, plan, lines.append)
    ok = demo.run()
    report = "\n".join(lines)
    assert ok, report
    failed = [what for good, what in demo.checks if not good]
    assert failed == [], report
    # Issue 18: the operator listened on 0.0.0.0 (the chart's value) on a stack said to be loopback.
    assert any("listens on loopback only" in what for _, what in demo.checks), report
    # The numbers the summary prints, checked here against the plan itself.
    assert len(plan.bounce) == 10 and len(plan.defer) == 10 and len(plan.suppressed) == 2
    assert len(plan.async_bounce) == 2 and len(plan.came_back) == 4
    per_ip = {ip: 0 for ip in ("127.0.0.2", "127.0.0.3")}
    per_domain: dict[str, int] = {}
    for domain, rx in demo.receivers.items():
        for m in rx.messages():
            per_ip[m.peer] += len(m.rcpt_tos)
            per_domain[domain] = per_domain.get(domain, 0) + len(m.rcpt_tos)
    # alpha.test: its 50, and the follow-up to the one who was only away
    assert per_domain == {"alpha.test": 51, "beta.test": 40, "gamma.test": 50, "delta.test": 48}
    assert 0 < per_ip["127.0.0.3"] <= plan.warmup_cap == 20
    assert per_ip["127.0.0.2"] + per_ip["127.0.0.3"] == 189
    # What came back went the way of the world: every report over SMTP to the
    # feedback receiver, the POST through the ingress stand-in to the endpoint.
    assert sorted(demo.answers.values()) == [200, *[250] * 4], demo.answers
    for part in ("inactive_mailbox by DSN", "complained 1 == 1", "unsubscribed 1 == 1"):
        assert any(part in what for _, what in demo.checks), (part, report)
    assert "follow-up skipped the 4 suppressed" in report
    assert_no_secret_in_any_log(demo, tmp_path, report)


def secrets_in(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value and value in text]


def assert_no_secret_in_any_log(demo: Demo, workdir: Path, report: str) -> None:
    """Issue 11: the operator's token and the pool's DKIM key never reach a log
    or the demo's output, while the run really used both."""
    delivered = [m for rx in demo.receivers.values() for m in rx.messages()]
    assert delivered and all(b"DKIM-Signature:" in m.data for m in delivered)  # key in use
    pem_lines = demo.dkim_pem.strip().splitlines()
    secrets = {
        "operator token": demo.token,
        "a line of the DKIM key": pem_lines[5],
        "the DKIM key's base64, as Secret data shows it": "".join(pem_lines[1:-1])[:64],
        "the DKIM Secret's data field": base64.b64encode(demo.dkim_pem.encode()).decode()[:64],
        "a PEM private key": "PRIVATE KEY-----",
        "the feedback token key's Secret data": base64.b64encode(demo.feedback_key).decode(),
        "the feedback token key in hex": demo.feedback_key.hex(),
    }
    assert demo.feedback_key  # the tokens of every message were signed with it
    logs = list(workdir.rglob("*.log"))
    assert len(logs) >= 5, logs  # the operator, the relays, the receiver, the endpoint
    leaked = {
        str(f): found for f in logs if (found := secrets_in(f.read_text(errors="replace"), secrets))
    }
    assert not leaked and not secrets_in(report, secrets), leaked
