"""Where mail for a domain goes: MX hosts by preference, per RFC 5321 section 5.

- MX records, lowest preference first (ties shuffled to spread load);
- no MX but an A/AAAA record: the domain itself is the implicit MX;
- null MX ("0 ."), RFC 7505: the domain accepts no mail, bounce without connecting;
- NXDOMAIN: the domain does not exist, bounce;
- timeouts and SERVFAIL: temporary, defer.

Answers are cached for their TTL so a campaign to one domain resolves once.
Static routes from the config replace lookups (smart hosts, tests).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from mailpipe.contracts.config import RelayConfig
from mailpipe.contracts.errors import PermanentError, TemporaryError


@dataclass(frozen=True)
class Route:
    host: str  # address or name to connect to
    port: int
    name: str  # the MX name, for logs and events


class NullMX(PermanentError):
    """RFC 7505: the domain publishes that it accepts no mail."""


class NoSuchDomain(PermanentError):
    """NXDOMAIN, or no MX and no address records: nowhere to deliver."""


class TemporaryDNSError(TemporaryError):
    """Timeout or server failure: try again later."""


NEGATIVE_CACHE_SECONDS = 60.0  # how long a temporary failure is remembered: avoids a lookup storm


class MXResolver:
    def __init__(self, config: RelayConfig) -> None:
        self._cache: dict[str, tuple[float, list[Route] | Exception]] = {}
        self.reconfigure(config)

    def reconfigure(self, config: RelayConfig) -> None:
        self.config = config
        resolver = dns.asyncresolver.Resolver(configure=config.dns_nameserver is None)
        if config.dns_nameserver is not None:
            host, _, port = config.dns_nameserver.rpartition(":")
            resolver.nameservers = [host]
            resolver.port = int(port)
        resolver.lifetime = 5.0  # whole lookup; a slow resolver defers rather than stalls
        self._resolver = resolver
        self._cache.clear()

    async def routes(self, domain: str) -> list[Route]:
        """Hosts to try in order; raises NullMX, NoSuchDomain or TemporaryDNSError."""
        static = self.config.routes.get(domain)
        if static:
            return [Route(r.host, r.port, r.host) for r in static]
        now = time.monotonic()
        cached = self._cache.get(domain)
        if cached is not None and cached[0] > now:
            if isinstance(cached[1], Exception):
                raise cached[1]
            return cached[1]
        try:
            routes, ttl = await self._lookup(domain)
        except TemporaryDNSError as exc:
            self._cache[domain] = (now + NEGATIVE_CACHE_SECONDS, exc)
            raise
        except (NullMX, NoSuchDomain) as exc:
            self._cache[domain] = (now + max(NEGATIVE_CACHE_SECONDS, 300.0), exc)
            raise
        self._cache[domain] = (now + ttl, routes)
        return routes

    async def _lookup(self, domain: str) -> tuple[list[Route], float]:
        port = self.config.smtp_port
        try:
            answer = await self._resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN as exc:
            raise NoSuchDomain(f"{domain}: no such domain") from exc
        except dns.resolver.NoAnswer:
            hosts = await self._addresses(domain)
            if not hosts:
                raise NoSuchDomain(f"{domain}: no MX and no address records") from None
            return [Route(h, port, domain) for h in hosts], 300.0
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise TemporaryDNSError(f"{domain}: {exc.__class__.__name__}") from exc
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        if len(records) == 1 and records[0].preference == 0 and str(records[0].exchange) == ".":
            raise NullMX(f"{domain} publishes a null MX")
        routes: list[Route] = []
        for record in records:
            name = str(record.exchange).rstrip(".")
            if not name:
                continue
            for address in await self._addresses(name):
                routes.append(Route(address, port, name))
        if not routes:
            raise TemporaryDNSError(f"{domain}: MX hosts have no addresses")
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else 300.0
        return routes, max(ttl, 1.0)

    async def _addresses(self, name: str) -> list[str]:
        out: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(name, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
                raise TemporaryDNSError(f"{name}: {exc.__class__.__name__}") from exc
            out.extend(r.address for r in answer)
        return out
