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
