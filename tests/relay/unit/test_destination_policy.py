"""The destination policy: a pool delivers to internal addresses only when it says so.

By default a relay refuses loopback, private, link-local and unspecified
destinations, whatever named them: an MX or A record (`test_mx_hardening`,
`tests/relay/integration/test_destination_policy.py`), a static route by
address (refused when the config is parsed) or by name (refused at connect
time, before any packet is sent). Issue 10, Deliver 5.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from mailpipe.contracts.config import forbidden_reason, parse_config
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.relay.classify import classify
from mailpipe.relay.delivery import SMTPTransport
from mailpipe.relay.ports import Envelope

from .conftest import make_config

pytestmark = pytest.mark.security

HOST = "127.0.0.1"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
    ],
)
def test_internal_addresses_are_named(address: str) -> None:
    assert forbidden_reason(address) is not None
    assert forbidden_reason("8.8.8.8") is None and forbidden_reason("2001:4860::8888") is None


def test_a_static_route_to_an_internal_address_is_refused_when_parsed() -> None:
    with pytest.raises(ValidationError, match=r"routes\[d.test\] host 10.0.0.5 is a private"):
        make_config(routes={"d.test": [{"host": "10.0.0.5"}]})
    allowed = {"allowed_networks": ["10.0.0.0/24"]}
    assert make_config(routes={"d.test": [{"host": "10.0.0.5"}]}, delivery=allowed).routes
    opted_in = {"allow_private_destinations": True}
    assert make_config(routes={"d.test": [{"host": "10.0.0.5"}]}, delivery=opted_in).routes


def test_allowed_networks_must_be_networks() -> None:
    with pytest.raises(Exception, match="allowed_networks"):
        parse_config(
            make_config().model_dump_json()[:-1] + ', "delivery": {"allowed_networks": ["x/8"]}}'
        )


async def _deliver(rx: SMTPReceiver, **delivery: Any) -> Any:
    # A route by *name*: only the transport, at connect time, sees the address.
    t = SMTPTransport(
        make_config(
            routes={"d.test": [{"host": "localhost", "port": rx.port}]},
            tls={"mode": "disabled"},
            egress=[{"address": HOST, "helo": "relay.test"}],
            delivery=delivery,
        )
    )
    env = Envelope("d.test", "s@sender.test", ("u@d.test",), b"Subject: x\r\n\r\nx\r\n", HOST, "r")
    try:
        result = await asyncio.wait_for(t.deliver(env), 20)
    finally:
        await t.close()
    return result


async def test_a_route_by_name_to_loopback_is_refused_before_connecting(
    smtp_receiver: Callable[..., SMTPReceiver],
) -> None:
    rx = smtp_receiver(HOST)
    before = sum(rx.connections().values())  # the receiver's own readiness probe
    result = await _deliver(rx)
    r = result.replies["u@d.test"]
    assert (r.code, r.enhanced) == (550, "5.4.4"), r
    assert "loopback address: destination not allowed by policy" in r.text
    verdict = classify(r, result.detail["u@d.test"])
    assert verdict.disposition.value == "bounced" and not verdict.suppress and not verdict.backoff
    assert sum(rx.connections().values()) == before  # not even a TCP handshake


@pytest.mark.parametrize(
    "delivery",
    [{"allow_private_destinations": True}, {"allowed_networks": ["127.0.0.0/8"]}],
    ids=["opted-in", "allowed-network"],
)
async def test_a_pool_that_opts_in_delivers_to_loopback(
    smtp_receiver: Callable[..., SMTPReceiver], delivery: dict[str, Any]
) -> None:
    rx = smtp_receiver(HOST)
    result = await _deliver(rx, **delivery)
    assert result.replies["u@d.test"].code == 250
    assert rx.recipients() == ["u@d.test"]
