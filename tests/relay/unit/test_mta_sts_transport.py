"""Issue 22 Deliver 3: the transport under mode mta-sts, real handshakes on loopback.

Two destinations may share an MX (every Google Workspace domain does) and
publish different policies: a connection opened unverified for one (policy
`none`, `testing` or absent) must never carry mail for one that enforces.
The policies come from a fixed table here (`Fixed`, in place of the fetcher
the transport makes); fetching them is `test_mta_sts_fetch`'s and the
acceptance test's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.relay.delivery import MXResolver, Route, SMTPTransport
from mailpipe.relay.delivery.mta_sts import Policy, STSMode
from mailpipe.relay.delivery.mta_sts_fetch import Applied
from mailpipe.relay.ports import Envelope, TransactionResult

from ..mx_certs import make_certs, server_context
from .conftest import make_config

pytestmark = pytest.mark.security

HOST = "127.0.0.1"
MX_NAME = "mx.shared.test"


class SharedMX(MXResolver):
    """Every domain's MX is the one receiver."""

    def __init__(self, config: Any, port: int) -> None:
        super().__init__(config)
        self.route = Route(HOST, port, MX_NAME)

    async def routes(self, domain: str) -> list[Route]:
        return [self.route]


class Fixed:
    """The policies of the test's domains, as the fetcher would find them."""

    def __init__(self, policies: dict[str, Policy | None]) -> None:
        self.policies = policies

    async def applied(self, domain: str) -> Applied:
        return Applied(self.policies.get(domain))


async def send(t: SMTPTransport, domain: str) -> TransactionResult:
    env = Envelope(
        domain, "s@sender.test", (f"a@{domain}",), b"Subject: t\r\n\r\nx\r\n", HOST, "r", 100
    )
    return await asyncio.wait_for(t.deliver(env), 60)  # a guard against hangs


async def test_an_unverified_connection_never_serves_an_enforcing_destination(
    smtp_receiver: Callable[..., SMTPReceiver], tmp_path: Path
) -> None:
    wrong = make_certs(tmp_path, "mx.wrong.test")  # trusted CA, another name
    rx = smtp_receiver(HOST, tls=server_context(wrong))
    config = make_config(
        tls={"mode": "mta-sts", "ca_file": str(wrong.ca)},
        egress=[{"address": HOST, "helo": "relay.test"}],
        delivery={"allow_private_destinations": True},
    )
    t = SMTPTransport(config, SharedMX(config, rx.port))
    t._sts = Fixed(  # type: ignore[assignment]
        {
            "none.test": Policy(STSMode.NONE, 100, ()),
            "testing.test": Policy(STSMode.TESTING, 100, (MX_NAME,)),
            "enforce.test": Policy(STSMode.ENFORCE, 100, (MX_NAME,)),
        }
    )
    try:
        for domain in ("none.test", "testing.test", "plain.test"):
            result = await send(t, domain)  # delivered unverified; the connection pooled
            assert result.replies[f"a@{domain}"].code == 250, result
            assert result.tls is not None and result.tls.verified is False, result.tls
        testing = await send(t, "testing.test")
        assert testing.tls is not None
        assert testing.tls.failure == "certificate-host-mismatch"  # reported, not refused
        opened = t.connections_opened
        enforced = await send(t, "enforce.test")
        r = enforced.replies["a@enforce.test"]
        assert (r.code, r.enhanced) == (451, "4.7.5"), r  # a fresh handshake, refused
        assert t.connections_opened == opened + 1
        assert enforced.tls is not None and enforced.tls.policy == "enforce"
        assert enforced.tls.failure == "certificate-host-mismatch"
        assert "a@enforce.test" not in {a for m in rx.messages() for a in m.rcpt_tos}
    finally:
        await t.close()


async def test_an_mta_sts_site_in_an_opportunistic_pool_enforces_only_there(
    smtp_receiver: Callable[..., SMTPReceiver], tmp_path: Path
) -> None:
    """Issue 22, TLS per site: `tls.sites` gives one domain mode mta-sts; the
    transport makes a policy fetcher for it, and another domain publishing the
    same enforcing policy stays under the pool's `opportunistic` (never asked)."""
    wrong = make_certs(tmp_path, "mx.wrong.test")  # trusted CA, another name
    rx = smtp_receiver(HOST, tls=server_context(wrong))
    config = make_config(
        tls={
            "mode": "opportunistic",
            "ca_file": str(wrong.ca),
            "sites": {"enforce.test": {"mode": "mta-sts"}},
        },
        egress=[{"address": HOST, "helo": "relay.test"}],
        delivery={"allow_private_destinations": True},
    )
    t = SMTPTransport(config, SharedMX(config, rx.port))
    assert t._sts is not None  # made because a site needs it, though the pool does not
    enforcing = Policy(STSMode.ENFORCE, 100, (MX_NAME,))
    t._sts = Fixed({"enforce.test": enforcing, "casual.test": enforcing})  # type: ignore[assignment]
    try:
        casual = await send(t, "casual.test")
        assert casual.replies["a@casual.test"].code == 250, casual
        assert casual.tls is not None and (casual.tls.mode, casual.tls.policy) == (
            "opportunistic",
            None,
        )
        enforced = await send(t, "enforce.test")
        r = enforced.replies["a@enforce.test"]
        assert (r.code, r.enhanced) == (451, "4.7.5"), r
        assert enforced.tls is not None and enforced.tls.policy == "enforce"
        assert [m.rcpt_tos for m in rx.messages()] == [("a@casual.test",)]
    finally:
        await t.close()
