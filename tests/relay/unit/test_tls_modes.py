"""Issue 22 findings 1 and 2: TLS modes with one meaning each, and a pool's own CA.

- `verify: true` with `opportunistic` used to verify, then deliver in clear on
  a bad certificate and stay in clear to that host for an hour: the
  combination is refused now, with the mode to use, and `verify` never sends
  in clear, over several attempts on one transport;
- a fixed certificate is used on the very next attempt;
- a receiver whose certificate comes from a private CA is verified with the
  pool's CA bundle (`tls.ca_file`), no process environment involved.

Real handshakes against the aiosmtpd receiver on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mailpipe.contracts.config import RelayTLSSettings, TLSMode
from mailpipe.contracts.policy import TLSSettings
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.relay.delivery import MXResolver, Route, SMTPTransport
from mailpipe.relay.delivery.tls_policy import TLSPlan, plan
from mailpipe.relay.ports import Envelope, SMTPReply

from ..mx_certs import make_certs, server_context
from .conftest import make_config

pytestmark = pytest.mark.security

HOST = "127.0.0.1"
MX_NAME = "mx.alpha.test"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"mode": "none"}, TLSPlan(TLSMode.NONE, False, False, True)),
        ({"mode": "disabled"}, TLSPlan(TLSMode.NONE, False, False, True)),
        ({"mode": "opportunistic"}, TLSPlan(TLSMode.OPPORTUNISTIC, True, False, True)),
        ({"mode": "required"}, TLSPlan(TLSMode.REQUIRED, True, False, False)),
        ({"mode": "required", "verify": True}, TLSPlan(TLSMode.VERIFY, True, True, False)),
        ({"mode": "verify"}, TLSPlan(TLSMode.VERIFY, True, True, False)),
    ],
    ids=["none", "disabled", "opportunistic", "required", "required+verify", "verify"],
)
def test_each_mode_has_one_plan(settings: dict[str, Any], expected: TLSPlan) -> None:
    assert plan(RelayTLSSettings.model_validate(settings)) == expected


@pytest.mark.parametrize("mode", ["verify", "required"])
def test_a_mode_that_never_clears_never_remembers_a_host_in_clear(mode: str) -> None:
    p = plan(RelayTLSSettings(mode=TLSMode(mode), verify=mode == "required"))
    assert p.starttls_now(clear_until=1e9, now=0.0) is True


def test_opportunistic_skips_starttls_only_while_a_failure_is_remembered() -> None:
    p = plan(RelayTLSSettings(mode=TLSMode.OPPORTUNISTIC))
    assert p.starttls_now(clear_until=100.0, now=50.0) is False
    assert p.starttls_now(clear_until=100.0, now=150.0) is True


@pytest.mark.parametrize("mode", ["opportunistic", "none", "disabled"])
def test_verify_with_a_mode_that_never_verifies_is_refused_naming_mode_verify(mode: str) -> None:
    with pytest.raises(ValidationError, match=rf"contradicts mode {mode}.*use mode: verify"):
        TLSSettings.model_validate({"mode": mode, "verify": True})


@pytest.mark.parametrize("tls", [{"mode": "opportunistic"}, {"mode": "required"}])
def test_a_ca_bundle_without_verification_is_refused(tls: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=r"only used to verify.*use mode: verify"):
        RelayTLSSettings.model_validate({**tls, "ca_file": "/ca.pem"})


class NamedMX(MXResolver):
    """The route an MX lookup gives: an address, known by a host name."""

    def __init__(self, config: Any, port: int) -> None:
        super().__init__(config)
        self.route = Route(HOST, port, MX_NAME)

    async def routes(self, domain: str) -> list[Route]:
        return [self.route]


def transport(port: int, **tls: Any) -> SMTPTransport:
    config = make_config(
        tls=tls,
        egress=[{"address": HOST, "helo": "relay.test"}],
        delivery={"allow_private_destinations": True},  # a loopback receiver: opted in
    )
    return SMTPTransport(config, NamedMX(config, port))


async def attempt(t: SMTPTransport) -> SMTPReply:
    env = Envelope(
        "alpha.test", "s@sender.test", ("a@alpha.test",), b"Subject: t\r\n\r\nx\r\n", HOST, "r"
    )
    result = await asyncio.wait_for(t.deliver(env), 60)  # a guard against hangs
    return result.replies["a@alpha.test"]


async def test_verify_never_sends_in_clear_and_uses_a_fixed_certificate_at_once(
    smtp_receiver: Callable[..., SMTPReceiver], tmp_path: Path
) -> None:
    (tmp_path / "wrong").mkdir()
    (tmp_path / "right").mkdir()
    wrong = make_certs(tmp_path / "wrong", "mx.wrong.test", ca_name="wrong-ca")
    right = make_certs(tmp_path / "right", MX_NAME, ca_name="right-ca")
    bundle = tmp_path / "bundle.pem"  # both CAs trusted: only the name is wrong
    bundle.write_bytes(wrong.ca.read_bytes() + right.ca.read_bytes())
    serving = server_context(wrong)
    rx = smtp_receiver(HOST, tls=serving)
    t = transport(rx.port, mode="verify", ca_file=str(bundle))
    try:
        for _ in range(5):
            r = await attempt(t)
            assert (r.code, r.enhanced) == (451, "4.7.5"), r
            assert MX_NAME in r.text and "certificate" in r.text.lower()
        assert rx.messages() == []  # nothing, and in particular nothing in clear
        serving.load_cert_chain(right.chain, right.key)  # the receiver fixes its certificate
        r = await attempt(t)
        assert r.code == 250, r
        assert [m.tls for m in rx.messages()] == [True]
    finally:
        await t.close()


async def test_a_private_ca_is_trusted_through_the_pools_bundle(
    smtp_receiver: Callable[..., SMTPReceiver], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    private = make_certs(tmp_path, MX_NAME)
    rx = smtp_receiver(HOST, tls=server_context(private))
    without = transport(rx.port, mode="verify")
    with_bundle = transport(rx.port, mode="verify", ca_file=str(private.ca))
    try:
        refused = await attempt(without)  # the system store does not know the private CA
        assert (refused.code, refused.enhanced) == (451, "4.7.5"), refused
        assert rx.messages() == []
        r = await attempt(with_bundle)
        assert r.code == 250, r
        assert [m.tls for m in rx.messages()] == [True]
    finally:
        await without.close()
        await with_bundle.close()


async def test_an_unreadable_ca_bundle_defers_naming_it_never_clear(
    smtp_receiver: Callable[..., SMTPReceiver], tmp_path: Path
) -> None:
    private = make_certs(tmp_path, MX_NAME)
    rx = smtp_receiver(HOST, tls=server_context(private))
    t = transport(rx.port, mode="verify", ca_file=str(tmp_path / "missing.pem"))
    try:
        r = await attempt(t)
        assert (r.code, r.enhanced) == (451, "4.7.5"), r
        assert "missing.pem not loaded" in r.text
        assert rx.messages() == []
    finally:
        await t.close()


async def test_opportunistic_encrypts_without_verifying(
    smtp_receiver: Callable[..., SMTPReceiver], tmp_path: Path
) -> None:
    """A certificate for another name from an unknown CA: encrypted all the same,
    as RFC 3207 opportunistic TLS is (it only protects against passive listeners)."""
    stranger = make_certs(tmp_path, "mx.someone-else.test", ca_name="unknown-ca")
    rx = smtp_receiver(HOST, tls=server_context(stranger))
    t = transport(rx.port, mode="opportunistic")
    try:
        r = await attempt(t)
        assert r.code == 250, r
        assert [m.tls for m in rx.messages()] == [True]
    finally:
        await t.close()
