"""The transport's hot path: a pooled connection's attempts report their TLS
without building a pydantic model per message (twice per message was about 2%
of the relay's CPU); each attempt still reports what its connection negotiated."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailpipe.contracts.tls_outcome import TLSOutcome
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.relay.ports import Envelope

from ..mx_certs import make_certs, server_context
from .test_tls_modes import HOST, transport

pytestmark = pytest.mark.security


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
