"""Where mail for a domain goes: MX hosts by preference, per RFC 5321 section 5.

- MX records, lowest preference first (ties shuffled to spread load);
- no MX but an A/AAAA record: the domain itself is the implicit MX;
- null MX ("0 ."), RFC 7505: the domain accepts no mail, bounce without connecting;
- NXDOMAIN: the domain does not exist, bounce;
- timeouts and SERVFAIL: temporary, defer.

Hostile or broken input is refused before or instead of a lookup, with a
reason (issue 10): a name that breaks RFC 1035 limits (`InvalidDomain`), an
address literal (`u@[192.0.2.1]`), MX records naming IP addresses instead of
hosts (RFC 5321 5.1 wants names: `UnroutableDomain`). Names are looked up as
A-labels (`addresses.ascii_domain`), so `bücher.test`, `BÜCHER.test` and
`xn--bcher-kva.test.` are one domain with one cache entry.

The resolver is bounded: at most `MAX_CONCURRENT_LOOKUPS` queries at once (a
burst of 20,000 new domains otherwise outlives every query's lifetime and
turns NXDOMAIN bounces into timeout deferrals), concurrent lookups of one
domain share one query, answers are cached for their TTL and failures for a
while (negative caching, RFC 2308), and at most `MAX_MX_ADDRESSES` addresses
are tried per attempt.

Destination policy (issue 10; ARCHITECTURE.md, "Least privilege"): a relay inside a
cluster must not become a probe of its own network, so addresses DNS gives
for a recipient domain are dropped when they are loopback, private,
link-local, unspecified, multicast, reserved or otherwise not global
(`destination_refusal`), unless the pool's `delivery.allowPrivateDestinations`
is set or the address is in its `delivery.allowedNetworks`; a domain left
with none is unroutable, with the reason: a 550 5.4.4 bounce without
suppression. Permanent because it is our policy and stable: retrying until
the max age would give the same answer days later; the address itself is
not bad, so it is not suppressed. The transport checks the address it
connects to once more (static routes, names), so no route escapes it.

Static routes from the config replace lookups (smart hosts, tests).

Each route says whether DNSSEC vouched for it (`Route.secure`: the MX answer
and the host's address answer both carried the AD bit of the pool's
resolver), which is all DANE (`dane`, `tlsa`) needs from here; the DO bit is
asked for only in mode dane. A static route is never secure.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.inet
import dns.rdatatype
import dns.resolver

from mailpipe.contracts import sites
from mailpipe.contracts.config import RelayConfig, TLSMode
from mailpipe.contracts.delivery import destination_refusal, forbidden_reason
from mailpipe.contracts.errors import PermanentError, TemporaryError

from ..addresses import AddressLiteral, InvalidDomain, ascii_domain
from .lookups import CachedLookups

__all__ = [
    "AddressLiteral",
    "InvalidDomain",
    "MXResolver",
    "NoSuchDomain",
    "NullMX",
    "Route",
    "TemporaryDNSError",
    "UnroutableDomain",
    "destination_refusal",
    "forbidden_reason",
]


@dataclass(frozen=True)
class Route:
    host: str  # address or name to connect to
    port: int
    name: str  # the MX name: for logs, events and the TLS certificate check
    secure: bool = False  # MX and address answers DNSSEC-validated (AD): DANE may apply


class NullMX(PermanentError):
    """RFC 7505: the domain publishes that it accepts no mail."""


class NoSuchDomain(PermanentError):
    """NXDOMAIN, or no MX and no address records: nowhere to deliver."""


class UnroutableDomain(PermanentError):
    """The domain's DNS data can never be used: e.g. its MX records name IP addresses."""


class TemporaryDNSError(TemporaryError):
    """Timeout or server failure: try again later."""


NEGATIVE_CACHE_SECONDS = 60.0  # how long a temporary failure is remembered: avoids a lookup storm
PERMANENT_CACHE_SECONDS = 300.0  # NXDOMAIN, null MX: RFC 2308 caps negative TTLs near this
IMPLICIT_MX_TTL_SECONDS = 300.0  # A/AAAA fallback answers: their own TTL is not carried through
LOOKUP_LIFETIME_SECONDS = 5.0  # one whole lookup; a slow resolver defers rather than stalls
# Postfix's smtp_mx_address_limit: addresses tried per delivery attempt. Fifty
# MX hosts at a 30-s connect timeout would hold a lane for 25 minutes.
MAX_MX_ADDRESSES = 5
# Queries in flight at once. Stays well under the default forwarding limits of
# local resolvers (dnsmasq dns-forward-max 150) so each query is answered within
# its lifetime; a burst of new domains queues here instead of timing out there.
MAX_CONCURRENT_LOOKUPS = 64

# EDNS payload with DO: the DNS flag day 2020 size, no fragmentation on any path.
EDNS_PAYLOAD_BYTES = 1232


def stub_resolver(config: RelayConfig) -> dns.asyncresolver.Resolver:
    """The pool's resolver (`dns_nameserver`, else /etc/resolv.conf). In mode
    dane it asks for DNSSEC (DO), so a validating resolver reports what it
    validated in the AD bit of each answer (RFC 6840 5.7), as Postfix asks (also
    when only some sites are in mode dane: the flag costs nothing elsewhere)."""
    resolver = dns.asyncresolver.Resolver(configure=config.dns_nameserver is None)
    if config.dns_nameserver is not None:
        host, _, port = config.dns_nameserver.rpartition(":")
        resolver.nameservers = [host]
        resolver.port = int(port)
    resolver.lifetime = LOOKUP_LIFETIME_SECONDS
    if TLSMode.DANE in config.tls.applied_modes:
        resolver.use_edns(0, dns.flags.DO, EDNS_PAYLOAD_BYTES)
    return resolver


def authentic(response: object) -> bool:
    """Whether a resolver's response carries the AD bit (validated)."""
    flags = getattr(response, "flags", 0)
    return bool(flags & dns.flags.AD)


class MXResolver:
    def __init__(self, config: RelayConfig) -> None:
        self._lookups = CachedLookups(
            self._lookup,
            {
                TemporaryDNSError: NEGATIVE_CACHE_SECONDS,
                NullMX: PERMANENT_CACHE_SECONDS,
                NoSuchDomain: PERMANENT_CACHE_SECONDS,
                UnroutableDomain: PERMANENT_CACHE_SECONDS,
            },
        )
        self._slots: asyncio.Semaphore | None = None
        self.reconfigure(config)

    def reconfigure(self, config: RelayConfig) -> None:
        self.config = config
        self._resolver = stub_resolver(config)
        self._lookups.clear()

    def known_site(self, domain: str) -> str | None:
        """`ports.SiteLookup`: the site of `domain` from a cached answer, else None.
        A statically routed domain (or one that cannot be looked up) is its own."""
        name = self._lookup_name(domain)
        if name is None:
            return domain
        found = self._lookups.peek(name)
        if found is None:
            return None
        return domain if isinstance(found, Exception) else self._site(domain, found)

    async def site(self, domain: str) -> str:
        """`ports.SiteLookup`: the site of `domain` after its MX lookup."""
        if self._lookup_name(domain) is None:
            return domain
        try:
            found = await self.routes(domain)
        except Exception:  # its delivery reports it; the site is the domain's own
            return domain
        return self._site(domain, found)

    def _lookup_name(self, domain: str) -> str | None:
        """The name `routes` looks up for `domain`, or None when it looks up none
        (a static route, a name it refuses)."""
        if domain in self.config.routes:
            return None
        try:
            name = ascii_domain(domain)
        except InvalidDomain:
            return None
        return None if name in self.config.routes else name

    @staticmethod
    def _site(domain: str, found: list[Route]) -> str:
        return sites.mx_site(r.name for r in found) or domain

    async def routes(self, domain: str) -> list[Route]:
        """Hosts to try in order, at most MAX_MX_ADDRESSES; raises InvalidDomain
        (AddressLiteral), NullMX, NoSuchDomain, UnroutableDomain or TemporaryDNSError."""
        static = self.config.routes.get(domain)
        if static:
            return [Route(r.host, r.port, r.host) for r in static]
        name = ascii_domain(domain)
        static = self.config.routes.get(name)
        if static:
            return [Route(r.host, r.port, r.host) for r in static]
        return await self._lookups.get(name)

    async def query(self, name: str, rdtype: str) -> dns.resolver.Answer:
        """One query through the pool's resolver and the concurrency bound (MTA-STS
        TXT and policy host lookups share both with MX lookups); dnspython's errors."""
        return await self._query(name, rdtype)

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer:
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_CONCURRENT_LOOKUPS)
        async with self._slots:
            return await self._resolver.resolve(name, rdtype)

    async def _lookup(self, domain: str) -> tuple[list[Route], float]:
        port = self.config.smtp_port
        try:
            answer = await self._query(domain, "MX")
        except dns.resolver.NXDOMAIN as exc:
            raise NoSuchDomain(f"{domain}: no such domain") from exc
        except dns.resolver.NoAnswer as exc:
            hosts = await self._addresses(domain)
            if not hosts:
                raise NoSuchDomain(f"{domain}: no MX and no address records") from None
            # the absence of MX validated (dnspython leaves `response()` untyped)
            no_mx_secure = authentic(exc.kwargs.get("response"))
            implicit = [Route(h, port, domain, no_mx_secure and ok) for h, ok in hosts]
            return self._permitted(domain, implicit), IMPLICIT_MX_TTL_SECONDS
        except dns.exception.DNSException as exc:  # timeout, SERVFAIL, anything odd
            raise TemporaryDNSError(f"{domain}: {exc.__class__.__name__}") from exc
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        if len(records) == 1 and records[0].preference == 0 and str(records[0].exchange) == ".":
            raise NullMX(f"{domain} publishes a null MX")
        mx_secure = authentic(answer.response)
        routes: list[Route] = []
        numeric: list[str] = []
        for record in records:
            name = str(record.exchange).rstrip(".")
            if not name:
                continue
            if dns.inet.is_address(name):
                numeric.append(name)  # RFC 5321 5.1: an MX names a host, never an address
                continue
            for address, secure in await self._addresses(name):
                routes.append(Route(address, port, name, mx_secure and secure))
            if len(routes) >= MAX_MX_ADDRESSES:
                break
        if not routes and numeric:
            raise UnroutableDomain(
                f"MX of {domain} is an IP address ({numeric[0]}), not a host name (RFC 5321 5.1)"
            )
        if not routes:
            raise TemporaryDNSError(f"{domain}: MX hosts have no addresses")
        routes = self._permitted(domain, routes)
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else IMPLICIT_MX_TTL_SECONDS
        return routes[:MAX_MX_ADDRESSES], max(ttl, 1.0)

    def _permitted(self, domain: str, routes: list[Route]) -> list[Route]:
        """The routes the destination policy allows; UnroutableDomain if none."""
        policy = self.config.delivery
        allowed = [r for r in routes if destination_refusal(r.host, policy) is None]
        if not allowed:
            first = routes[0]
            refusal = destination_refusal(first.host, policy)
            raise UnroutableDomain(f"{domain}: {first.name} is at {first.host}, {refusal}")
        return allowed

    async def _addresses(self, name: str) -> list[tuple[str, bool]]:
        """The host's addresses, each with whether its answer was validated."""
        out: list[tuple[str, bool]] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._query(name, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                raise TemporaryDNSError(f"{name}: {exc.__class__.__name__}") from exc
            secure = authentic(answer.response)
            out.extend((r.address, secure) for r in answer)
            if len(out) >= MAX_MX_ADDRESSES:
                break
        return out
