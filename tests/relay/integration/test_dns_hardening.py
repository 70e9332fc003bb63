"""Issue 10 findings 3 (DNS part) and 6 against the real stack: dnsmasq, Kafka
and relay processes.

A recipient domain that breaks RFC 1035 (a 64-character label, an empty
label, a name over 255 octets), an address literal and an MX that names an IP
address each used to raise in the DNS library or end as `NoNameservers`: no
event, no commit, a frozen partition. Each must now be bounced with a clear
reason while the good records around them are delivered. An IDN domain is
looked up and delivered as its A-label. A burst of NXDOMAIN domains against
dnsmasq all become bounces, none a timeout deferral.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from mailpipe.contracts.config import RelayConfig
from mailpipe.devstack.dns import Zone
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.relay.delivery import MXResolver
from mailpipe.relay.delivery.mx import NoSuchDomain, TemporaryDNSError

from .conftest import Pool, RelayProcess, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.security]

IDN_A_LABEL = "xn--bcher-kva.test"  # bücher.test
BAD = {
    "u@" + "a" * 64 + ".test": ("5.1.3", "label of 64 characters"),
    "u@x..test": ("5.1.3", "empty label"),
    "u@" + ".".join(["abcdefghij"] * 24) + ".test": ("5.1.3", "over the 253"),
    "u@[127.0.0.10]": ("5.1.2", "address literal"),
    "u@numeric.test": ("5.4.4", "IP address"),
}


def test_hostile_domains_bounce_and_the_rest_is_delivered(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
    dns_zones: Callable[[list[Zone]], object],
    stack_state: Any,
) -> None:
    rx = smtp_receiver("127.0.0.12", 0)
    dns_zones(
        [
            Zone(IDN_A_LABEL, mx=((f"mx.{IDN_A_LABEL}", 10),), a={f"mx.{IDN_A_LABEL}": rx.host}),
            Zone("good.test", mx=(("mx.good.test", 10),), a={"mx.good.test": rx.host}),
            Zone("numeric.test", mx=(("127.0.0.50", 10),)),
        ]
    )
    pool = pool_factory(smtp_port=rx.port, dns_nameserver=f"127.0.0.1:{stack_state.dns_port}")
    relay = relays(pool)
    pool.send("first@good.test")
    for address in BAD:
        pool.send(address)
    pool.send("u@bücher.test")
    pool.send("last@good.test")
    pool.flush()

    wait_for(lambda: len(pool.events()) >= len(BAD) + 3, 60, "an event per record", relay)
    by_rcpt = {e["recipient"]: e for e in pool.events()}
    for address, (enhanced, reason) in BAD.items():
        event = by_rcpt[address]
        assert event["disposition"] == "bounced", event
        assert event["enhanced_code"] == enhanced, event
        assert reason in event["reply"], event
        assert "NoNameservers" not in event["reply"]
    for address in ("first@good.test", "u@bücher.test", "last@good.test"):
        assert by_rcpt[address]["disposition"] == "delivered", by_rcpt[address]
    # The receiver saw the A-label: RCPT TO:<u@xn--bcher-kva.test>, no SMTPUTF8 needed.
    assert "u@xn--bcher-kva.test" in [r for m in rx.messages() for r in m.rcpt_tos]


NXDOMAIN_BURST = 5_000  # a quarter of the 20,000 of the finding; before the fix all 5,000 timed out


def test_nxdomain_burst_against_dnsmasq_bounces(
    dns_zones: Callable[[list[Zone]], object], stack_state: Any
) -> None:
    dns_zones([])
    config = RelayConfig.model_validate(
        {
            "pool": "t/dns",
            "kafka": {
                "bootstrap_servers": "unused:9092",
                "group_id": "g",
                "outbound_topic": "o",
                "events_topic": "e",
                "dlq_topic": "d",
            },
            "egress": [{"address": "127.0.0.2", "helo": "h"}],
            "dns_nameserver": f"127.0.0.1:{stack_state.dns_port}",
            "metrics_port": 0,
        }
    )

    async def burst() -> list[str]:
        resolver = MXResolver(config)

        async def one(domain: str) -> str:
            try:
                await resolver.routes(domain)
            except NoSuchDomain:
                return "bounce"
            except TemporaryDNSError as exc:
                return f"defer: {exc}"
            return "routes"

        return await asyncio.gather(*(one(f"gone{i}.burst.test") for i in range(NXDOMAIN_BURST)))

    results = asyncio.run(burst())
    deferred = [r for r in results if r != "bounce"]
    assert not deferred, (len(deferred), deferred[:3])
