"""Issue 10 findings 3 (DNS part), 5 (MX cap) and 6 (resolver, IP literals):
hostile destination domains and DNS data become clear SMTP replies, never
exceptions, and the resolver stays bounded.

`FakeDNS` replaces `dns.asyncresolver.Resolver.resolve` with zones held in
memory and a server that, like dnsmasq (`dns-forward-max`, default 150),
drops queries beyond the ones it already has outstanding: the client then
waits out its lifetime. A client that sends thousands of queries at once sees
most of them time out, as the dev stack's dnsmasq did with 20,000 NXDOMAIN
domains (14,081 `LifetimeTimeout` deferrals).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from mailpipe.relay.classify import classify
from mailpipe.relay.delivery import MXResolver, SMTPTransport
from mailpipe.relay.delivery import mx as mx_module
from mailpipe.relay.delivery.mx import NoSuchDomain, TemporaryDNSError
from mailpipe.relay.ports import Envelope, SMTPReply

from .conftest import make_config

pytestmark = pytest.mark.security

SERVICE_SECONDS = 0.001  # the fake server's time per query
SERVER_OUTSTANDING_LIMIT = 150  # dnsmasq's default dns-forward-max: more are dropped


class _Answer:
    def __init__(self, rrset: dns.rrset.RRset) -> None:
        self.rrset = rrset
        self.response = None  # dnspython's Answer carries the message: here no flags, no AD

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rrset)


@dataclass
class FakeDNS:
    mx: dict[str, list[str]] = field(default_factory=dict)  # name -> ["10 mx.x.test."]
    fail: dict[str, Exception] = field(default_factory=dict)  # name -> what resolve raises
    a: dict[str, list[str]] = field(default_factory=dict)  # name -> ["192.0.2.1"]
    aaaa: dict[str, list[str]] = field(default_factory=dict)  # name -> ["2001:db8::1"]
    queries: list[tuple[str, str]] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0

    async def resolve(self, qname: Any, rdtype: Any = "A", *args: Any, **kwargs: Any) -> _Answer:
        name = str(qname).rstrip(".").lower()
        kind = str(rdtype)
        dns.name.from_text(name)  # the real resolver's name checks (LabelTooLong...)
        self.queries.append((name, kind))
        if name in self.fail:
            raise self.fail[name]
        dropped = self.in_flight >= SERVER_OUTSTANDING_LIMIT
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(SERVICE_SECONDS)
        finally:
            self.in_flight -= 1
        if dropped:  # never answered: the client gives up when its lifetime ends
            raise dns.resolver.LifetimeTimeout(timeout=5.0, errors=[])
        table = {"MX": self.mx, "A": self.a, "AAAA": self.aaaa}.get(kind, {})
        known = name in self.mx or name in self.a or name in self.aaaa
        if name not in table:
            if known:
                raise dns.resolver.NoAnswer()
            raise dns.resolver.NXDOMAIN()
        return _Answer(dns.rrset.from_text_list(name + ".", 300, "IN", kind, table[name]))


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()

    async def resolve(self: Any, qname: Any, rdtype: Any = "A", *a: Any, **k: Any) -> _Answer:
        return await fake.resolve(qname, rdtype, *a, **k)

    monkeypatch.setattr(dns.asyncresolver.Resolver, "resolve", resolve)
    return fake


def bounced(r: SMTPReply) -> bool:
    """The classifier's verdict is a bounce (its first field: an outcome or disposition)."""
    return str(classify(r)[0].value) == "bounced"


def config(*, allow_private: bool = True) -> Any:
    """Loopback test MX hosts: opted in to private destinations unless a test says not."""
    return make_config(
        dns_nameserver="127.0.0.1:9",
        egress=[{"address": "127.0.0.1", "helo": "r"}],
        delivery={"allow_private_destinations": allow_private},
    )


async def deliver(domain: str) -> SMTPReply:
    transport = SMTPTransport(config())
    try:
        env = Envelope(domain, "s@sender.test", (f"u@{domain}",), b"x\r\n", "127.0.0.1", "r")
        result = await asyncio.wait_for(transport.deliver(env), 30)
    finally:
        await transport.close()
    return result.replies[f"u@{domain}"]


@pytest.mark.parametrize(
    ("domain", "reason"),
    [
        pytest.param("a" * 64 + ".test", "label of 64 characters", id="label-over-63"),
        pytest.param("x..test", "empty label", id="empty-label"),
        pytest.param(".x.test", "empty label", id="leading-dot"),
        pytest.param(".".join(["abcdefghij"] * 24) + ".test", "over the 253", id="name-over-255"),
    ],
)
async def test_invalid_domain_is_a_permanent_reply(
    fake_dns: FakeDNS, domain: str, reason: str
) -> None:
    r = await deliver(domain)
    assert (r.code, r.enhanced) == (553, "5.1.3")
    assert reason in r.text
    assert bounced(r)
    assert fake_dns.queries == []  # refused before any lookup


async def test_address_literal_refused_with_a_clear_reason(fake_dns: FakeDNS) -> None:
    r = await deliver("[127.0.0.10]")
    assert (r.code, r.enhanced) == (550, "5.1.2")
    assert "address literal" in r.text
    assert fake_dns.queries == []


async def test_ip_literal_mx_refused_with_a_clear_reason(fake_dns: FakeDNS) -> None:
    fake_dns.mx["numeric.test"] = ["10 127.0.0.50."]
    r = await deliver("numeric.test")
    assert (r.code, r.enhanced) == (550, "5.4.4")
    assert "IP address" in r.text and "NoNameservers" not in r.text
    assert bounced(r)
    assert not classify(r).backoff


async def test_ip_literal_mx_skipped_when_a_named_mx_exists(fake_dns: FakeDNS) -> None:
    fake_dns.mx["mixed.test"] = ["5 192.0.2.9.", "10 mx.mixed.test."]
    fake_dns.a["mx.mixed.test"] = ["192.0.2.10"]
    routes = await MXResolver(config()).routes("mixed.test")
    assert [(r.host, r.name) for r in routes] == [("192.0.2.10", "mx.mixed.test")]


async def test_mx_hosts_tried_per_attempt_are_capped(fake_dns: FakeDNS) -> None:
    fake_dns.mx["many.test"] = [f"{i} mx{i:02d}.many.test." for i in range(50)]
    for i in range(50):
        fake_dns.a[f"mx{i:02d}.many.test"] = [f"192.0.2.{i + 1}"]
    routes = await MXResolver(config()).routes("many.test")
    assert len(routes) == mx_module.MAX_MX_ADDRESSES == 5
    assert [r.name for r in routes] == [f"mx{i:02d}.many.test" for i in range(5)]
    address_queries = [q for q in fake_dns.queries if q[1] != "MX"]
    assert len(address_queries) <= 2 * mx_module.MAX_MX_ADDRESSES  # A and AAAA per host


async def test_many_nxdomain_domains_at_once_bounce_not_defer(fake_dns: FakeDNS) -> None:
    """20,000 NXDOMAIN domains at once became 14,081 LifetimeTimeout deferrals; here
    1,000 against a server that keeps at most 150 queries outstanding."""
    resolver = MXResolver(config())
    domains = [f"gone{i}.test" for i in range(1000)]

    async def outcome(domain: str) -> str:
        try:
            await resolver.routes(domain)
        except NoSuchDomain:
            return "bounce"
        except TemporaryDNSError:
            return "defer"
        return "routes"

    results = await asyncio.gather(*(outcome(d) for d in domains))
    assert results.count("bounce") == len(domains), {r: results.count(r) for r in set(results)}
    assert fake_dns.peak <= mx_module.MAX_CONCURRENT_LOOKUPS


async def test_concurrent_lookups_of_one_domain_share_one_query(fake_dns: FakeDNS) -> None:
    fake_dns.mx["one.test"] = ["10 mx.one.test."]
    fake_dns.a["mx.one.test"] = ["192.0.2.1"]
    resolver = MXResolver(config())
    await asyncio.gather(*(resolver.routes("one.test") for _ in range(100)))
    for burst in (100, 10):  # the second burst comes after the answer: from the cache
        await asyncio.gather(
            *(resolver.routes("gone.test") for _ in range(burst)), return_exceptions=True
        )
    assert fake_dns.queries.count(("one.test", "MX")) == 1
    assert fake_dns.queries.count(("gone.test", "MX")) == 1  # negative answer cached


async def test_trailing_dot_and_idn_resolve_as_one_ascii_name(fake_dns: FakeDNS) -> None:
    fake_dns.mx["xn--bcher-kva.test"] = ["10 mx.xn--bcher-kva.test."]
    fake_dns.a["mx.xn--bcher-kva.test"] = ["192.0.2.7"]
    resolver = MXResolver(config())
    for domain in ("bücher.test", "BÜCHER.test", "xn--bcher-kva.test."):
        routes = await resolver.routes(domain)
        assert [(r.host, r.name) for r in routes] == [("192.0.2.7", "mx.xn--bcher-kva.test")]


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("::ffff:10.0.0.1", "private"),
        ("fe80::1", "link-local"),
    ],
)
async def test_internal_destinations_refused_by_policy(
    fake_dns: FakeDNS, address: str, kind: str
) -> None:
    fake_dns.mx["internal.test"] = ["10 mx.internal.test."]
    (fake_dns.aaaa if ":" in address else fake_dns.a)["mx.internal.test"] = [address]
    resolver = MXResolver(config(allow_private=False))
    with pytest.raises(mx_module.UnroutableDomain, match=f"a {kind} address"):
        await resolver.routes("internal.test")


async def test_public_destinations_allowed_and_private_kept_when_allowed(
    fake_dns: FakeDNS,
) -> None:
    fake_dns.mx["mixed.test"] = ["10 a.mixed.test.", "20 b.mixed.test."]
    fake_dns.a["a.mixed.test"] = ["127.0.0.1"]
    fake_dns.a["b.mixed.test"] = ["8.8.8.8"]
    strict = await MXResolver(config(allow_private=False)).routes("mixed.test")
    assert [r.host for r in strict] == ["8.8.8.8"]
    lenient = await MXResolver(config()).routes("mixed.test")
    assert [r.host for r in lenient] == ["127.0.0.1", "8.8.8.8"]


@pytest.mark.faults
@pytest.mark.parametrize(
    "error",
    [
        dns.resolver.LifetimeTimeout(timeout=5.0, errors=[]),
        dns.resolver.NoNameservers(),  # dnsmasq stopped, or SERVFAIL from every server
        dns.exception.FormError(),  # a malformed answer
        dns.resolver.YXDOMAIN(),
        dns.resolver.NoRootSOA(),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_resolver_failures_defer_never_bounce_never_raise(
    fake_dns: FakeDNS, error: Exception
) -> None:
    fake_dns.fail["broken.test"] = error
    transport = SMTPTransport(config())
    env = Envelope("broken.test", "s@sender.test", ("u@broken.test",), b"x\r\n", "127.0.0.1", "r")
    try:
        result = await asyncio.wait_for(transport.deliver(env), 30)
    finally:
        await transport.close()
    r = result.replies["u@broken.test"]
    assert (r.code, r.enhanced) == (451, "4.4.3"), r
    assert type(error).__name__ in r.text
    assert result.detail == {"u@broken.test": "dns"}
