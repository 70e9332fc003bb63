"""A relay process refuses an MX on an internal address unless its pool opts in.

The MX of `inside.test` resolves (real dnsmasq) to a loopback receiver: the
pool without `delivery.allowPrivateDestinations` bounces the recipient with
the policy's reason and never connects; the pool with it delivers
(issue 10, Deliver 5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mailpipe.devstack.dns import Zone
from mailpipe.devstack.smtp_receiver import SMTPReceiver

from .conftest import Pool, RelayProcess, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.security]


def test_a_loopback_mx_is_refused_without_the_opt_in_and_delivered_with_it(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    smtp_receiver: Callable[[str, int], SMTPReceiver],
    dns_zones: Callable[..., Any],
    stack_state: Any,
) -> None:
    rx = smtp_receiver("127.0.0.10", 0)
    dns_zones([Zone("inside.test", mx=(("mx.inside.test", 10),), a={"mx.inside.test": rx.host})])
    resolver = {"smtp_port": rx.port, "dns_nameserver": f"127.0.0.1:{stack_state.dns_port}"}
    strict = pool_factory(delivery={"allow_private_destinations": False}, **resolver)
    opted_in = pool_factory(**resolver)  # samples.relay_config opts in, as every test pool
    assert opted_in.config.delivery.allow_private_destinations
    a = relays(strict, "relay-strict")
    b = relays(opted_in, "relay-opted-in")
    strict.send("u@inside.test")
    opted_in.send("v@inside.test")
    strict.flush()
    opted_in.flush()

    wait_for(lambda: len(strict.events()) == 1, 60, "the strict pool's event", a)
    wait_for(lambda: len(opted_in.events()) == 1, 60, "the opted-in pool's event", b)
    refused = strict.events()[0]
    assert refused["disposition"] == "bounced", refused
    assert refused["enhanced_code"] == "5.4.4"
    assert "127.0.0.10, a loopback address: destination not allowed by policy" in refused["reply"]
    assert "mx_host" not in refused  # no connection was attempted
    assert not strict.read(strict.config.kafka.suppressions_topic)  # the address is not bad
    assert opted_in.events()[0]["disposition"] == "delivered"
    assert rx.recipients() == ["v@inside.test"]
