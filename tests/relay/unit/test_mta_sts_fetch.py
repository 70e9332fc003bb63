"""Issue 22 Deliver 3: the MTA-STS fetcher against a real HTTPS server on loopback.

The fetch follows RFC 8461 section 3.3 and never blocks mail by itself: no
redirects, only `text/plain`, a bounded body, the certificate checked for
`mta-sts.<domain>` (a private CA through the pool's bundle), the policy
host's address checked against the destination policy; a failed fetch
keeps the cached policy until it expires, a new TXT id fetches again. DNS
answers come from an in-test table (real dnspython records): the DNS path
itself is the acceptance test's, against dnsmasq.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import pytest

from mailpipe.contracts.delivery import DeliveryPolicy
from mailpipe.contracts.tls_outcome import TLSFailure
from mailpipe.relay.delivery.mta_sts import MAX_POLICY_BYTES, STSMode
from mailpipe.relay.delivery.mta_sts_fetch import FAILED_FETCH_SECONDS, PolicyFetcher

from ..mta_sts_server import PolicyServer, policy
from ..mx_certs import Certs, make_certs, server_context

pytestmark = pytest.mark.security

HOST = "127.0.0.1"
DOMAIN = "alpha.test"
WEB = f"mta-sts.{DOMAIN}"


class _Answer:
    def __init__(self, rdtype: str, values: list[str]) -> None:
        t = dns.rdatatype.from_text(rdtype)
        self._rdata = [dns.rdata.from_text(dns.rdataclass.IN, t, v) for v in values]
        self.rrset = type("RRset", (), {"ttl": 0})()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rdata)


class Zone:
    """name -> rdtype -> values; anything else is NXDOMAIN."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.queries: list[tuple[str, str]] = []

    def txt(self, text: str) -> None:
        self.records[(f"_mta-sts.{DOMAIN}", "TXT")] = [f'"{text}"']

    async def query(self, name: str, rdtype: str) -> Any:
        self.queries.append((name, rdtype))
        values = self.records.get((name, rdtype))
        if values is None:
            raise dns.resolver.NXDOMAIN()
        return _Answer(rdtype, values)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path, WEB, ca_name="web-ca")


@pytest.fixture
def server(certs: Certs) -> Iterator[PolicyServer]:
    s = PolicyServer(HOST, 0, server_context(certs)).start()
    yield s
    s.stop()


@pytest.fixture
def zone() -> Zone:
    z = Zone()
    z.records[(WEB, "A")] = [HOST]
    z.txt("v=STSv1; id=one;")
    return z


ALLOW = DeliveryPolicy(allow_private_destinations=True)


def fetcher(
    zone: Zone, server: PolicyServer, certs: Certs, clock: Clock, **kw: Any
) -> PolicyFetcher:
    return PolicyFetcher(
        zone.query,
        kw.pop("destinations", ALLOW),
        str(certs.ca),
        port=server.port,
        clock=clock,
        **kw,
    )


async def test_a_policy_is_fetched_once_and_cached_for_its_max_age(
    zone: Zone, server: PolicyServer, certs: Certs
) -> None:
    server.policies[WEB] = policy("enforce", "mx.alpha.test", max_age=100)
    clock = Clock()
    f = fetcher(zone, server, certs, clock)
    first = await f.applied(DOMAIN)
    assert first.policy is not None and first.policy.mode is STSMode.ENFORCE
    assert first.failure is None
    clock.now += 50
    assert (await f.applied(DOMAIN)).policy == first.policy
    assert server.requests == [WEB]  # the same id: no second fetch
    clock.now += 60  # past max_age: fetched again
    await f.applied(DOMAIN)
    assert server.requests == [WEB, WEB]


async def test_a_new_id_fetches_again_and_a_failed_fetch_keeps_the_cached_policy(
    zone: Zone, server: PolicyServer, certs: Certs
) -> None:
    server.policies[WEB] = policy("enforce", "mx.alpha.test", max_age=100)
    clock = Clock()
    f = fetcher(zone, server, certs, clock)
    cached = (await f.applied(DOMAIN)).policy
    zone.txt("v=STSv1; id=two;")
    server.policies[WEB] = policy("testing", "mx.alpha.test", max_age=100)
    clock.now += 2  # past the TXT answer's reuse
    assert (await f.applied(DOMAIN)).policy.mode is STSMode.TESTING  # type: ignore[union-attr]
    zone.txt("v=STSv1; id=three;")
    del server.policies[WEB]  # 404 from now on
    clock.now += 2
    kept = await f.applied(DOMAIN)
    assert kept.policy is not None and kept.policy.mode is STSMode.TESTING
    assert kept.failure is TLSFailure.STS_POLICY_FETCH_ERROR
    assert cached is not None
    clock.now += 200  # the cached policy expired: as without one
    gone = await f.applied(DOMAIN)
    assert gone.policy is None and gone.failure is TLSFailure.STS_POLICY_FETCH_ERROR


async def test_a_missing_txt_record_does_not_withdraw_a_cached_policy(
    zone: Zone, server: PolicyServer, certs: Certs
) -> None:
    server.policies[WEB] = policy("enforce", "mx.alpha.test", max_age=100)
    clock = Clock()
    f = fetcher(zone, server, certs, clock)
    await f.applied(DOMAIN)
    del zone.records[(f"_mta-sts.{DOMAIN}", "TXT")]
    clock.now += 2
    assert (await f.applied(DOMAIN)).policy is not None


async def test_a_failed_fetch_is_not_repeated_for_every_message(
    zone: Zone, server: PolicyServer, certs: Certs
) -> None:
    clock = Clock()
    f = fetcher(zone, server, certs, clock)
    for _ in range(3):
        assert (await f.applied(DOMAIN)).failure is TLSFailure.STS_POLICY_FETCH_ERROR
        clock.now += 2
    assert server.requests == [WEB]
    clock.now += FAILED_FETCH_SECONDS
    await f.applied(DOMAIN)
    assert server.requests == [WEB, WEB]


@pytest.mark.parametrize(
    ("setup", "failure"),
    [
        (lambda s: s.redirect.add(WEB), TLSFailure.STS_POLICY_FETCH_ERROR),
        (lambda s: setattr(s, "content_type", "text/html"), TLSFailure.STS_POLICY_INVALID),
        (
            lambda s: s.policies.update({WEB: b"x" * (MAX_POLICY_BYTES + 1)}),
            TLSFailure.STS_POLICY_INVALID,
        ),
        (
            lambda s: s.policies.update({WEB: b"version: STSv1\nmode: strict\n"}),
            TLSFailure.STS_POLICY_INVALID,
        ),
    ],
    ids=["redirect", "html", "oversized", "bad-mode"],
)
async def test_what_section_3_3_refuses_is_no_policy(
    zone: Zone, server: PolicyServer, certs: Certs, setup: Any, failure: TLSFailure
) -> None:
    server.policies[WEB] = policy("enforce", "mx.alpha.test")
    setup(server)
    applied = await fetcher(zone, server, certs, Clock()).applied(DOMAIN)
    assert (applied.policy, applied.failure) == (None, failure)
    assert server.requests == [WEB]  # asked once, redirect not followed


async def test_a_certificate_for_another_name_is_a_webpki_failure(
    zone: Zone, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    other = make_certs(tmp_path / "other", "mta-sts.other.test", ca_name="other-ca")
    s = PolicyServer(HOST, 0, server_context(other)).start()
    try:
        s.policies[WEB] = policy("enforce", "mx.alpha.test")
        applied = await fetcher(zone, s, other, Clock()).applied(DOMAIN)
    finally:
        s.stop()
    assert (applied.policy, applied.failure) == (None, TLSFailure.STS_WEBPKI_INVALID)
    assert s.requests == []  # refused at the handshake, nothing asked


async def test_the_policy_host_is_subject_to_the_destination_policy(
    zone: Zone, server: PolicyServer, certs: Certs
) -> None:
    server.policies[WEB] = policy("enforce", "mx.alpha.test")
    strict = DeliveryPolicy(allow_private_destinations=False)
    applied = await fetcher(zone, server, certs, Clock(), destinations=strict).applied(DOMAIN)
    assert (applied.policy, applied.failure) == (None, TLSFailure.STS_POLICY_FETCH_ERROR)
    assert server.requests == []  # loopback: never connected


async def test_no_txt_record_is_no_policy_and_no_fetch(
    zone: Zone, server: PolicyServer, certs: Certs
) -> None:
    del zone.records[(f"_mta-sts.{DOMAIN}", "TXT")]
    server.policies[WEB] = policy("enforce", "mx.alpha.test")
    applied = await fetcher(zone, server, certs, Clock()).applied(DOMAIN)
    assert (applied.policy, applied.failure) == (None, None)
    assert server.requests == []
