"""Issue 22 Deliver 3 and 5 on the dev stack: MTA-STS (RFC 8461) against real servers.

A relay process with `tls.mode: mta-sts`; dnsmasq publishes each domain's
MX, its `_mta-sts` TXT record and `mta-sts.<domain>`; a real HTTPS server
on 127.0.0.84:443 serves the policies with a certificate from a private CA
(the pool's CA bundle); one SMTP receiver on 127.0.0.83 serves a
certificate for some MX names only. Per RFC 8461, as the events say:

    enforce, MX listed, certificate right   -> delivered, verified TLS
    enforce, no MX listed                   -> deferred 4.7.5, nothing sent
    testing, certificate for another name   -> delivered unverified, mismatch reported
    none, certificate for another name      -> delivered unverified, nothing reported
    TXT record with a bad id                -> no policy: delivered, invalid record reported
    enforce with max_age 1, host gone       -> deferred while cached, then delivered
                                               (an expired policy no longer applies)
    enforce cached, then the HTTPS host goes away and the certificate breaks
                                            -> deferred: the cached policy keeps applying
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailpipe.devstack.dns import Zone
from mailpipe.devstack.procs import free_port
from mailpipe.devstack.smtp_receiver import SMTPReceiver

from ..mta_sts_server import PolicyServer, policy
from ..mx_certs import make_certs, server_context
from .conftest import Pool, RelayProcess, wait_for

# one relay through every case: its waits add up past the suite's 300 s default when loaded
pytestmark = [pytest.mark.relay, pytest.mark.security, pytest.mark.timeout(600)]

MX_IP = "127.0.0.83"
MX_IP_LATER = "127.0.0.85"  # the MX hosts move here, with a certificate for another name
HTTPS_IP = "127.0.0.84"
HTTPS_PORT = 443  # RFC 8461 section 3.3: the policy host is always asked on 443

# domain -> (TXT record, policy body or None, MX name)
DOMAINS: dict[str, tuple[str, bytes | None, str]] = {
    "enforce.test": ("v=STSv1; id=e1;", policy("enforce", "mx.enforce.test"), "mx.enforce.test"),
    "elsewhere.test": ("v=STSv1; id=x1;", policy("enforce", "*.other.test"), "mx.elsewhere.test"),
    "testing.test": ("v=STSv1; id=t1;", policy("testing", "mx.testing.test"), "mx.testing.test"),
    "none.test": ("v=STSv1; id=n1;", policy("none"), "mx.none.test"),
    "badid.test": ("v=STSv1; id=not-an-id!;", policy("enforce", "*.other.test"), "mx.badid.test"),
    "expired.test": (
        "v=STSv1; id=x1;",
        policy("enforce", "*.other.test", max_age=1),
        "mx.expired.test",
    ),
    "cached.test": ("v=STSv1; id=c1;", policy("enforce", "mx.cached.test"), "mx.cached.test"),
}
# MX names the receiver's certificate is for; the others get a name mismatch
GOOD_MX = ("mx.enforce.test", "mx.cached.test")


def zones(mx_ip: str = MX_IP) -> list[Zone]:
    return [
        Zone(
            domain,
            mx=((mx, 10),),
            a={mx: mx_ip, f"mta-sts.{domain}": HTTPS_IP},
            txt={f"_mta-sts.{domain}": (txt,)},
        )
        for domain, (txt, _, mx) in DOMAINS.items()
    ]


def _seen(pool: Pool) -> set[tuple[str, str]]:
    """(domain, disposition) of every event so far: one read of the topic."""
    return {(e["domain"], e["disposition"]) for e in pool.events()}


def test_mta_sts_policies_decide_as_rfc_8461_says(
    pool_factory: Callable[..., Pool],
    relays: Callable[..., RelayProcess],
    dns_zones: Callable[[list[Zone]], object],
    stack_state: Any,
    tmp_path: Path,
) -> None:
    for d in ("web", "mx", "broken"):
        (tmp_path / d).mkdir()
    names = [f"mta-sts.{d}" for d in DOMAINS]
    web = make_certs(tmp_path / "web", names[0], ca_name="web-ca", also=tuple(names[1:]))
    mx = make_certs(tmp_path / "mx", GOOD_MX[0], ca_name="mx-ca", also=GOOD_MX[1:])
    broken = make_certs(tmp_path / "broken", "mx.unrelated.test", ca_name="broken-ca")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(web.ca.read_bytes() + mx.ca.read_bytes() + broken.ca.read_bytes())

    server = PolicyServer(HTTPS_IP, HTTPS_PORT, server_context(web))
    for domain, (_, body, _) in DOMAINS.items():
        if body is not None:
            server.policies[f"mta-sts.{domain}"] = body
    rx = SMTPReceiver(MX_IP, free_port(MX_IP), tls_context=server_context(mx)).start()
    server.start()
    server_up = True
    later: SMTPReceiver | None = None
    relay: RelayProcess | None = None
    try:
        dns_zones(zones())
        pool = pool_factory(
            smtp_port=rx.port,
            dns_nameserver=f"127.0.0.1:{stack_state.dns_port}",
            tls={"mode": "mta-sts", "ca_file": str(bundle)},
        )
        relay = relays(pool)
        for domain in DOMAINS:
            pool.send(f"a@{domain}")
        pool.flush()

        delivered = ("enforce.test", "testing.test", "none.test", "badid.test", "cached.test")
        wait_for(
            lambda: (
                {(d, "delivered") for d in delivered}
                | {("elsewhere.test", "deferred"), ("expired.test", "deferred")}
                <= _seen(pool)
            ),
            180,  # a deadline, not a duration: generous for a loaded machine
            "the first attempt of every domain",
            relay,
        )

        def last(domain: str, disposition: str) -> dict[str, Any]:
            key = (domain, disposition)
            return [e for e in pool.events() if (e["domain"], e["disposition"]) == key][-1]

        # enforce: the listed MX, its certificate verified
        tls = last("enforce.test", "delivered")["tls"]
        assert tls["mode"] == "mta-sts" and tls["policy"] == "enforce", tls
        assert tls["verified"] is True and tls["protocol"].startswith("TLSv1"), tls
        assert "failure" not in tls or tls["failure"] is None, tls
        # enforce, MX not listed: deferred for TLS policy, nothing sent
        deferred = last("elsewhere.test", "deferred")
        assert deferred["enhanced_code"] == "4.7.5", deferred
        assert deferred["tls"]["failure"] == "mx-mismatch", deferred
        # testing: delivered over unverified TLS, the failure enforce would refuse reported
        tls = last("testing.test", "delivered")["tls"]
        assert tls["policy"] == "testing" and tls["verified"] is False, tls
        assert tls["failure"] == "certificate-host-mismatch", tls
        assert tls["protocol"].startswith("TLSv1"), tls
        # none: as without a policy (opportunistic), nothing to report
        tls = last("none.test", "delivered")["tls"]
        assert tls["policy"] == "none" and tls["verified"] is False, tls
        assert tls.get("failure") is None, tls
        # a TXT record with a bad id is no policy, even with an enforcing file served
        tls = last("badid.test", "delivered")["tls"]
        assert tls.get("policy") is None and tls["failure"] == "sts-policy-invalid", tls
        assert "mta-sts.badid.test" not in server.requests

        received = {r for m in rx.messages() for r in m.rcpt_tos}
        assert "a@elsewhere.test" not in received and "a@expired.test" not in received

        # The policy host goes away; the MX hosts move to a receiver with a
        # certificate for another name (a new address: no connection verified
        # earlier is reused).
        server.stop()
        server_up = False
        later = SMTPReceiver(MX_IP_LATER, rx.port, tls_context=server_context(broken)).start()
        dns_zones(zones(MX_IP_LATER))
        pool.send("b@cached.test")
        pool.flush()
        # expired.test's policy (max_age 1) expired and cannot be fetched again:
        # as without a policy, it is delivered (RFC 8461 section 5.1)
        wait_for(lambda: ("expired.test", "delivered") in _seen(pool), 120, "expired.test", relay)
        tls = last("expired.test", "delivered")["tls"]
        assert tls.get("policy") is None and tls["failure"] == "sts-policy-fetch-error", tls

        # cached.test's policy was cached before the host went away: it still
        # enforces, so the broken certificate defers, over several retries
        def b_deferred() -> int:
            return sum(
                e["disposition"] == "deferred" and e["recipient"] == "b@cached.test"
                for e in pool.events()
            )

        wait_for(lambda: b_deferred() >= 3, 120, "three deferrals of b@cached.test", relay)
        b_events = [e for e in pool.events() if e["recipient"] == "b@cached.test"]
        assert {e["disposition"] for e in b_events} == {"deferred"}, b_events
        assert all(e["enhanced_code"] == "4.7.5" for e in b_events), b_events
        assert b_events[-1]["tls"]["policy"] == "enforce", b_events[-1]
        assert b_events[-1]["tls"]["failure"] == "certificate-host-mismatch", b_events[-1]
        assert "b@cached.test" not in {r for m in later.messages() for r in m.rcpt_tos}
        assert all(m.tls for m in rx.messages() + later.messages())  # never in clear
    finally:
        if relay is not None:
            relay.stop()
        if server_up:
            server.stop()
        rx.stop()
        if later is not None:
            later.stop()
