"""Sites: the naming rule, records forwarded to their site's partition, and the
fair share of a site's connection slots among its domains."""

from __future__ import annotations

import itertools
import json

import dns.asyncresolver
import pytest

from mailpipe.contracts import sites
from mailpipe.relay.delivery import MXResolver
from mailpipe.relay.fakes import MXSites

from .conftest import Harness, make_config, record_bytes
from .test_mx_hardening import FakeDNS

GROUPS = {"grp": ["a.test", "b.test"], "wide": ["*.wide.test"]}


@pytest.mark.parametrize(
    ("domain", "overrides", "site"),
    [
        ("a.test", {"grp"}, "grp"),
        ("B.Test", set(), "grp"),  # a hand-written group is a site, limited or not
        ("x.wide.test", set(), "wide"),
        ("a.test", {"a.test", "grp"}, "a.test"),  # a limit of its own: its own site
        ("other.test", {"grp"}, "other.test"),
    ],
    ids=["grouped", "case", "pattern", "own-override", "ungrouped"],
)
def test_the_site_naming_rule(domain: str, overrides: set[str], site: str) -> None:
    assert sites.site_of(domain, GROUPS, overrides) == site


@pytest.mark.parametrize(
    ("hosts", "site"),
    [
        (["gmail-smtp-in.l.google.com.", "alt1.gmail-smtp-in.l.google.com."], "google.com"),
        (["aspmx.l.google.com", "alt2.aspmx.l.google.com"], "google.com"),
        (["contoso-com.mail.protection.outlook.com"], "outlook.com"),
        (["mx1.example.co.uk", "MX2.Example.CO.UK"], "example.co.uk"),
        (["mx.b.test", "mx.a.test"], "a.test+b.test"),
        (["192.0.2.1", "localhost"], None),
    ],
    ids=["gmail", "workspace", "m365", "cctld", "two-providers", "no-names"],
)
def test_a_site_from_mx_hosts(hosts: list[str], site: str | None) -> None:
    assert sites.mx_site(hosts) == site


def test_hop_headers_count_up_and_a_bad_count_stops_forwarding() -> None:
    once = sites.hopped((("trace", b"1"),))
    assert once == (("trace", b"1"), (sites.HOPS_HEADER, b"1"))
    assert sites.hops(sites.hopped(once)) == 2
    assert sites.hops(((sites.HOPS_HEADER, b"x"),)) == sites.MAX_SITE_HOPS


async def test_a_record_keyed_by_its_domain_goes_to_its_sites_partition_unchanged() -> None:
    """Domains of one group hash to different partitions when keyed by domain, so
    two relays would each count the group's limits alone: the relay forwards the
    record, keyed by the group, to the same topic, and sends nothing itself."""
    h = Harness(make_config(domain_groups=GROUPS, throttles={"grp": {"max_connections": 1}}))
    value = record_bytes("u@a.test")
    h.source.append("p.outbound", 0, b"a.test", value, (("trace", b"t1"),))
    h.source.append("p.delay.1m", 0, b"b.test", record_bytes("v@b.test", not_before=2e9))
    await h.run_until(lambda: len(h.sink.topics["p.delay.1m"]) == 1)
    assert h.sink.topics["p.outbound"] == [(b"grp", value)]
    assert h.sink.headers["p.outbound"] == [(("trace", b"t1"), (sites.HOPS_HEADER, b"1"))]
    assert [k for k, _ in h.sink.topics["p.delay.1m"]] == [b"grp"]  # not due: still forwarded
    assert h.transport.envelopes == []
    assert h.engine.tracker.in_flight == 0  # both offsets finished


async def test_a_record_forwarded_too_often_is_delivered_where_it_is() -> None:
    h = Harness(make_config(domain_groups=GROUPS))
    hops = ((sites.HOPS_HEADER, str(sites.MAX_SITE_HOPS).encode()),)
    h.source.append("p.outbound", 0, b"a.test", record_bytes("u@a.test"), hops)
    await h.run_until(lambda: len(h.events()) == 1)
    assert [e.domain for e in h.transport.envelopes] == ["a.test"]
    assert "p.outbound" not in h.sink.topics


async def test_postponed_and_retried_records_are_keyed_by_their_site() -> None:
    h = Harness(make_config(domain_groups=GROUPS))
    h.transport.answer("u@a.test", "451 4.3.0 try later")
    h.put(record_bytes("u@a.test"))
    await h.run_until(lambda: any(h.sink.topics[t] for t in ("p.delay.1m", "p.delay.10m")))
    keys = [k for t in ("p.delay.1m", "p.delay.10m") for k, _ in h.sink.topics[t]]
    assert keys == [b"grp"]


async def test_two_domains_sharing_one_connection_take_it_in_turn() -> None:
    """One connection for the group: a lane hands the slot over after each
    attempt while the other domain waits, instead of keeping it while its own
    queue lasts (all of a.test first, then b.test)."""
    h = Harness(make_config(domain_groups=GROUPS, throttles={"grp": {"max_connections": 1}}))
    n = 10
    for i in range(n):
        h.put(record_bytes(f"u{i}@a.test"))
    for i in range(n):
        h.put(record_bytes(f"u{i}@b.test"))
    await h.run_until(lambda: len(h.events()) == 2 * n)
    order = [e.domain for e in h.transport.envelopes]
    longest = max(len(list(run)) for _, run in itertools.groupby(order))
    assert longest <= 2, order
    assert sorted(order) == ["a.test"] * n + ["b.test"] * n


async def test_a_single_domain_keeps_all_its_sites_slots() -> None:
    """Handing over is only for another domain in line: a domain alone keeps
    every slot busy (its own queue longer than its slots does not end lanes)."""
    h = Harness(make_config(domain_groups=GROUPS, throttles={"grp": {"max_connections": 3}}))
    h.transport.delay_seconds = 0.01
    busy = peak = 0
    deliver = h.transport.deliver

    async def counting(envelope):  # type: ignore[no-untyped-def]
        nonlocal busy, peak
        busy += 1
        peak = max(peak, busy)
        try:
            return await deliver(envelope)
        finally:
            busy -= 1

    h.transport.deliver = counting  # type: ignore[method-assign]
    for i in range(12):
        h.put(record_bytes(f"u{i}@a.test"))
    await h.run_until(lambda: len(h.events()) == 12)
    assert peak == 3
    assert json.loads(json.dumps(h.engine.scheduler.describe()))["lanes"] == {}


async def test_domains_on_one_providers_mx_hosts_share_its_site_and_its_limits() -> None:
    """Two domains hosted on *.google.com MX hosts are the site `google.com`: its
    records are forwarded there, and a looked-up domain already keyed by its site
    shares the site's one connection with the other, in turn."""
    google = ["aspmx.l.google.com", "alt1.aspmx.l.google.com"]
    lookup = MXSites({"a.test": google, "b.test": ["gmail-smtp-in.l.google.com"]})
    config = make_config(throttles={"google.com": {"max_connections": 1}})
    h = Harness(config, sites=lookup)
    h.source.append("p.outbound", 0, b"a.test", record_bytes("u@a.test"))  # keyed by domain
    for i in range(4):
        h.source.append("p.outbound", 1, b"google.com", record_bytes(f"u{i}@a.test"))
        h.source.append("p.outbound", 1, b"google.com", record_bytes(f"v{i}@b.test"))
    await h.run_until(lambda: len(h.events()) == 8)
    assert [k for k, _ in h.sink.topics["p.outbound"]] == [b"google.com"]  # the forward
    order = [e.domain for e in h.transport.envelopes]
    assert max(len(list(run)) for _, run in itertools.groupby(order)) <= 2, order
    assert h.engine.scheduler.shaping.shapers.keys() == {"google.com"}


async def test_the_mx_resolver_names_sites_from_its_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay's resolver is the site lookup: a site is known only from a cached
    answer; static routes and failed lookups leave a domain its own site."""
    dns_ = FakeDNS(
        mx={"a.test": ["10 aspmx.l.google.com.", "20 alt1.aspmx.l.google.com."]},
        a={"aspmx.l.google.com": ["192.0.2.1"], "alt1.aspmx.l.google.com": ["192.0.2.2"]},
    )

    async def resolve(self: object, qname: object, rdtype: object = "A", *a: object) -> object:
        return await dns_.resolve(qname, rdtype)

    monkeypatch.setattr(dns.asyncresolver.Resolver, "resolve", resolve)
    routed = {"r.test": [{"host": "127.0.0.10", "port": 25}]}
    resolver = MXResolver(
        make_config(
            dns_nameserver="127.0.0.1:9",
            routes=routed,
            delivery={"allow_private_destinations": True},
        )
    )
    assert resolver.known_site("a.test") is None
    assert await resolver.site("a.test") == "google.com"
    assert resolver.known_site("a.test") == "google.com"
    assert await resolver.site("gone.test") == "gone.test"  # NXDOMAIN: delivery says why
    assert resolver.known_site("r.test") == "r.test"
    assert await resolver.site("r.test") == "r.test"


async def test_a_sites_back_off_rests_the_ip_for_all_its_domains() -> None:
    """A provider that says "slow down" for one of its domains means its
    infrastructure: the IP rests for the whole site, not only that domain."""
    h = Harness(make_config(domain_groups=GROUPS, throttles={"grp": {"max_connections": 1}}))
    h.transport.answer("u@a.test", "421 4.7.0 too fast, slow down")
    h.put(record_bytes("u@a.test"))
    h.put(record_bytes("v@b.test"))
    delays = ("p.delay.1m", "p.delay.10m")
    await h.run_until(lambda: sum(len(h.sink.topics[t]) for t in delays) == 2)
    assert [e.domain for e in h.transport.envelopes] == ["a.test"]  # b.test never tried
    [held] = h.engine.scheduler.shaping.actions.active(h.clock.time())
    assert (held.site, held.egress_ip) == ("grp", "127.0.0.2")
