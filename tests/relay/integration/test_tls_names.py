"""Issue 10 finding 10 on the dev stack: with `tls.verify: true` a relay process
checks the MX certificate against the MX host NAME from DNS.

dnsmasq publishes `alpha.test MX mx.alpha.test`, `mx.alpha.test A 127.0.0.13`;
the receiver there serves a certificate for mx.alpha.test only (no IP in it).
The relay used to check it against 127.0.0.13 ("certificate is not valid for
'127.0.0.13'"), defer with a 421 that backed the IP off, and never deliver.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailpipe.devstack.dns import Zone
from mailpipe.devstack.procs import free_port
from mailpipe.devstack.smtp_receiver import SMTPReceiver

from ..mx_certs import make_certs, server_context
from .conftest import Pool, RelayProcess, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.security]

MX_HOST = "127.0.0.13"


def test_required_verified_tls_checks_the_mx_name(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    dns_zones: Callable[[list[Zone]], object],
    stack_state: Any,
    tmp_path: Path,
) -> None:
    certs = make_certs(tmp_path, "mx.alpha.test")
    rx = SMTPReceiver(MX_HOST, free_port(MX_HOST), tls_context=server_context(certs)).start()
    relay: RelayProcess | None = None
    try:
        dns_zones([Zone("alpha.test", mx=(("mx.alpha.test", 10),), a={"mx.alpha.test": MX_HOST})])
        pool = pool_factory(
            smtp_port=rx.port,
            dns_nameserver=f"127.0.0.1:{stack_state.dns_port}",
            tls={"mode": "required", "verify": True},
        )
        relay = relays(pool, env={"SSL_CERT_FILE": str(certs.ca)})
        pool.send("a@alpha.test")
        pool.flush()
        wait_for(lambda: len(pool.events()) >= 1, 60, "a disposition", relay)
        (event,) = pool.events()
        assert event["disposition"] == "delivered", event
        assert event["mx_host"] == "mx.alpha.test"
        assert [m.tls for m in rx.messages()] == [True]
    finally:
        # The relay first: it QUITs its pooled TLS connection. A receiver stopped
        # under an open TLS session leaks that socket (a ResourceWarning later).
        if relay is not None:
            relay.stop()
        rx.stop()


def test_verify_never_sends_in_clear_and_resumes_after_the_certificate_is_fixed(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    dns_zones: Callable[[list[Zone]], object],
    stack_state: Any,
    tmp_path: Path,
) -> None:
    """Issue 22 findings 1 and 2: `verify` against a certificate for another name
    defers every retry with nothing sent (it used to go in clear, and stay in
    clear to that host for an hour); once the receiver serves the right
    certificate the next retry delivers over TLS. Both CAs are private, trusted
    through the pool's CA bundle (`tls.ca_file`), not the process environment."""
    (tmp_path / "wrong").mkdir()
    (tmp_path / "right").mkdir()
    wrong = make_certs(tmp_path / "wrong", "mx.other.test", ca_name="wrong-ca")
    right = make_certs(tmp_path / "right", "mx.alpha.test", ca_name="right-ca")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(wrong.ca.read_bytes() + right.ca.read_bytes())
    serving = server_context(wrong)
    rx = SMTPReceiver(MX_HOST, free_port(MX_HOST), tls_context=serving).start()
    relay: RelayProcess | None = None
    try:
        dns_zones([Zone("alpha.test", mx=(("mx.alpha.test", 10),), a={"mx.alpha.test": MX_HOST})])
        pool = pool_factory(
            smtp_port=rx.port,
            dns_nameserver=f"127.0.0.1:{stack_state.dns_port}",
            tls={"mode": "verify", "ca_file": str(bundle)},
        )
        relay = relays(pool)

        def deferred() -> int:
            return sum(e["disposition"] == "deferred" for e in pool.events())

        pool.send("a@alpha.test")
        pool.flush()
        wait_for(lambda: deferred() >= 3, 90, "three deferred attempts", relay)
        assert rx.messages() == []  # nothing delivered, so nothing in clear
        for e in pool.events():  # deferred for TLS (our policy), not for anything else
            assert (e["disposition"], e["enhanced_code"]) == ("deferred", "4.7.5"), e
        serving.load_cert_chain(right.chain, right.key)  # the receiver fixes its certificate
        fixed_at = deferred()
        wait_for(lambda: rx.messages(), 60, "a delivery after the fix", relay)
        # An attempt already past its handshake when the certificate changed may
        # still defer; the one after it delivers.
        assert deferred() <= fixed_at + 1
        assert [m.tls for m in rx.messages()] == [True]
    finally:
        if relay is not None:
            relay.stop()
        rx.stop()
