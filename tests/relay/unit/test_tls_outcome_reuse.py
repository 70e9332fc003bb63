"""The transport's hot path: a pooled connection's attempts report their TLS
without building a pydantic model per message (twice per message was about 2%
of the relay's CPU), and a destination's TLS plan is matched once per domain;
each attempt still reports what its connection negotiated, under the config
in force."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailpipe.contracts.config import RelayConfig
from mailpipe.contracts.policy import TLSSite
from mailpipe.contracts.tls_outcome import TLSOutcome
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.relay.delivery import transport as transport_module
from mailpipe.relay.delivery.tls_policy import TLSPlan
from mailpipe.relay.ports import Envelope

from ..mx_certs import make_certs, server_context
from .test_tls_modes import HOST, transport

pytestmark = pytest.mark.security

_NONE = TLSSite(mode="none")


async def test_attempts_on_a_pooled_connection_share_their_tls_outcome(
    smtp_receiver: Callable[..., SMTPReceiver], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    init, copy = TLSOutcome.__init__, TLSOutcome.model_copy

    def counted_init(self: TLSOutcome, **data: Any) -> None:
        built.append("init")
        init(self, **data)

    def counted_copy(self: TLSOutcome, **kw: Any) -> TLSOutcome:
        built.append("copy")
        return copy(self, **kw)

    monkeypatch.setattr(TLSOutcome, "__init__", counted_init)
    monkeypatch.setattr(TLSOutcome, "model_copy", counted_copy)
    rx = smtp_receiver(HOST, tls=server_context(make_certs(tmp_path, "mx.alpha.test")))
    t = transport(rx.port, mode="opportunistic")
    outcomes = []
    try:
        for i in range(10):
            env = Envelope(
                "alpha.test", "s@sender.test", (f"a{i}@alpha.test",), b"Subject: t\r\n\r\nx\r\n",
                HOST, "relay.test",
            )  # fmt: skip
            result = await asyncio.wait_for(t.deliver(env), 60)
            assert result.replies[f"a{i}@alpha.test"].code == 250
            outcomes.append(result.tls)
    finally:
        await t.close()
    assert t.connections_opened == 1
    assert len(built) <= 2, built  # the destination's and the connection's, once each
    assert outcomes[0] is not None and outcomes[0].protocol.startswith("TLSv1")
    assert (outcomes[0].mode, outcomes[0].verified, outcomes[0].failure) == (
        "opportunistic", False, None,
    )  # fmt: skip
    assert all(o == outcomes[0] for o in outcomes)


async def test_a_destinations_plan_is_looked_up_once_per_config_and_a_reload_applies_it(
    smtp_receiver: Callable[..., SMTPReceiver], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The site and group match of a destination's TLS plan is made once per
    domain, not per message; a new config's plan applies from its next message."""
    looked_up: list[str] = []
    lookup = transport_module.destination_plan

    def counted(config: RelayConfig, domain: str) -> TLSPlan:
        looked_up.append(domain)
        return lookup(config, domain)

    monkeypatch.setattr(transport_module, "destination_plan", counted)
    rx = smtp_receiver(HOST, tls=server_context(make_certs(tmp_path, "mx.alpha.test")))
    t = transport(rx.port, mode="opportunistic")

    async def mode(i: int) -> str | None:
        env = Envelope(
            "alpha.test", "s@sender.test", (f"a{i}@alpha.test",), b"Subject: t\r\n\r\nx\r\n",
            HOST, "relay.test",
        )  # fmt: skip
        result = await asyncio.wait_for(t.deliver(env), 60)
        assert result.replies[f"a{i}@alpha.test"].code == 250
        return result.tls.mode if result.tls is not None else None

    try:
        assert [await mode(i) for i in range(5)] == ["opportunistic"] * 5
        assert looked_up == ["alpha.test"]
        reloaded = t.config.model_copy(
            update={"tls": t.config.tls.model_copy(update={"sites": {"alpha.test": _NONE}})}
        )
        t.reconfigure(reloaded)
        assert await mode(5) == "none"
        assert looked_up == ["alpha.test", "alpha.test"]
    finally:
        await t.close()
