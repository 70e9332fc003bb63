"""Fault: the recipient domains' DNS server (dnsmasq) is down, then back.

A resolver that does not answer says nothing about the domain: every record
must be deferred with a DNS reason (451 4.4.3 "DNS lookup failed"), none
bounced and no address suppressed, and once DNS answers again everything is
delivered. Resuming takes up to the MX resolver's negative cache of a
temporary failure (`delivery.mx.NEGATIVE_CACHE_SECONDS`) after DNS is back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mailpipe.devstack.dns import Zone
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.devstack.stack import Stack, StackState
from mailpipe.relay.delivery.mx import NEGATIVE_CACHE_SECONDS
from tests.conftest import wait_for
from tests.relay.integration.conftest import MX_HOST, Pool, RelayProcess

from .conftest import count

pytestmark = [pytest.mark.faults, pytest.mark.relay]

DOMAINS = ("dns1.test", "dns2.test")
TOTAL = 20
RESUME_SECONDS = NEGATIVE_CACHE_SECONDS + 60  # the cached failure expires, then retries run


def test_dns_down_defers_with_a_dns_reason_and_resumes_when_back(
    pool_factory: Callable[..., Pool],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
    relays: Callable[..., RelayProcess],
    dns_zones: Callable[[list[Zone]], object],
    stack_state: StackState,
    broken_stack: Stack,
) -> None:
    rx = smtp_receiver(MX_HOST, 0)
    dns_zones([Zone(d, mx=((f"mx.{d}", 10),), a={f"mx.{d}": rx.host}) for d in DOMAINS])
    pool = pool_factory(smtp_port=rx.port, dns_nameserver=f"127.0.0.1:{stack_state.dns_port}")
    broken_stack.stop_component("dnsmasq")
    sent = [f"u{i}@{DOMAINS[i % len(DOMAINS)]}" for i in range(TOTAL)]
    for rcpt in sent:
        pool.send(rcpt)
    pool.flush()
    relay = relays(pool)

    def deferred_for_dns() -> set[str]:
        return {
            e["recipient"]
            for e in pool.events()
            if e["disposition"] == "deferred" and "4.4.3" in (e.get("reply") or "")
        }

    wait_for(lambda: deferred_for_dns() >= set(sent), 60, "every record deferred for DNS", relay)
    outage = count(pool, sent, rx.recipients())
    events: list[dict[str, Any]] = pool.events()
    assert outage.delivered == 0, outage
    assert not [e for e in events if e["disposition"] != "deferred"], "a final word without DNS"
    assert all("DNS lookup failed" in (e.get("reply") or "") for e in events), events[:3]

    broken_stack.start_component("dnsmasq")

    def done() -> bool:
        t = count(pool, sent, rx.recipients())
        return t.lost == 0 and t.stalled == 0

    wait_for(done, RESUME_SECONDS, "every recipient delivered once DNS is back", relay)
    t = count(pool, sent, rx.recipients())
    print(f"dns outage: {t}")
    assert (t.lost, t.stalled, t.finals_twice, t.duplicated) == (0, 0, 0, 0), t
    final = {e["disposition"] for e in pool.events()} - {"deferred"}
    assert final == {"delivered"}, final  # never bounced, never suppressed
