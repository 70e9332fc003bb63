"""MTA-STS IO: the `_mta-sts` TXT lookup, the HTTPS policy fetch, and the policy cache.

The rules (grammar, MX patterns, when to fetch) are `mta_sts`'s; this module
only asks them. DNS goes through the relay's resolver (`MXResolver.query`:
the pool's nameserver, its concurrency bound), and the policy host's
addresses pass the pool's destination policy like an MX's, so a policy URL
cannot make a relay probe its own network. The fetch (RFC 8461 section 3.3):
HTTPS on port 443 with the certificate checked for `mta-sts.<domain>`
against the system's CAs and the pool's CA bundle, no redirects, no HTTP
caching, only 200 with `text/plain`, at most `MAX_POLICY_BYTES` within
`FETCH_SECONDS`. aiohttp is the client: async, maintained, and it takes our
resolver, so no thread and no second DNS path.

Nothing here ever blocks mail by itself: a failed lookup or fetch keeps a
valid cached policy, and without one the domain is treated as publishing
none (`Applied.failure` says what went wrong, for the events and metrics).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import dns.exception
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult

from mailpipe.contracts.delivery import DeliveryPolicy, destination_refusal
from mailpipe.contracts.tls_outcome import TLSFailure

from .lookups import SingleFlight
from .mta_sts import (
    MAX_POLICY_BYTES,
    POLICY_PATH,
    Cached,
    InvalidPolicy,
    Policy,
    Step,
    STSRecord,
    fetched,
    next_step,
    parse_policy,
    parse_record,
)

log = logging.getLogger("mailpipe.relay.delivery.mta_sts")

HTTPS_PORT = 443  # section 3.3: the policy host is always asked on 443
FETCH_SECONDS = 10.0  # the whole fetch; a slow policy host must not hold a lane for long
# A failed fetch is not tried again for this long (per domain and TXT id): a
# policy host that is down would otherwise cost a connection per message.
FAILED_FETCH_SECONDS = 60.0
RECORD_MIN_SECONDS = 1.0  # a TXT answer is reused at least this long (TTL 0 zones)
RECORD_MAX_SECONDS = 300.0  # and at most this long: a new id is noticed within it
MAX_DOMAINS = 100_000  # policies and records remembered; past it the oldest go

Query = Callable[[str, str], Awaitable[dns.resolver.Answer]]


@dataclass(frozen=True)
class Applied:
    """What MTA-STS says for a domain now: the policy in force (None: as without
    one) and what went wrong finding a newer one, if anything."""

    policy: Policy | None
    failure: TLSFailure | None = None


class FetchError(Exception):
    def __init__(self, failure: TLSFailure, why: str) -> None:
        super().__init__(why)
        self.failure = failure


class _PolicyHostResolver(AbstractResolver):
    """aiohttp's resolver: the relay's DNS, and the destination policy on each address."""

    def __init__(self, query: Query, policy: DeliveryPolicy) -> None:
        self._query, self._policy = query, policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found: list[ResolveResult] = []
        refusals: list[str] = []
        for rdtype, fam in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
            try:
                answer = await self._query(host, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                raise OSError(f"{host}: {exc.__class__.__name__}") from exc
            for r in answer:
                refusal = destination_refusal(r.address, self._policy)
                if refusal is not None:
                    refusals.append(f"{host} is at {r.address}, {refusal}")
                    continue
                found.append(
                    ResolveResult(
                        hostname=host,
                        host=r.address,
                        port=port,
                        family=fam,
                        proto=0,
                        flags=socket.AI_NUMERICHOST,
                    )
                )
        if not found:
            raise OSError(refusals[0] if refusals else f"{host} has no address")
        return found

    async def close(self) -> None:
        pass


def _bounded(table: dict[Any, Any]) -> None:
    """Drop the oldest entries of a cache at its size limit."""
    while len(table) >= MAX_DOMAINS:
        del table[next(iter(table))]


class PolicyFetcher:
    """The MTA-STS policies of destination domains, cached per RFC 8461 section 5.1."""

    def __init__(
        self,
        query: Query,
        destinations: DeliveryPolicy,
        ca_file: str | None = None,
        *,
        port: int = HTTPS_PORT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._query = query
        self._destinations = destinations
        self._ca_file = ca_file
        self._port = port
        self._clock = clock
        self._policies: dict[str, Cached] = {}
        # domain -> (valid until, the STSv1 record, None, or why it is invalid)
        self._records: dict[str, tuple[float, STSRecord | InvalidPolicy | None]] = {}
        self._failed: dict[tuple[str, str], tuple[float, TLSFailure]] = {}
        self._flights: SingleFlight[Applied] = SingleFlight()

    async def applied(self, domain: str) -> Applied:
        """The policy in force for `domain` (an A-label name); never raises for
        DNS or HTTPS trouble: that is `Applied.failure`."""
        # One lookup per domain however many lanes ask.
        return await self._flights.run(domain, lambda: self._applied(domain))

    async def _applied(self, domain: str) -> Applied:
        record = await self._record(domain)
        now = self._clock()
        cached = self._policies.get(domain)
        valid = cached.policy if cached is not None and cached.valid(now) else None
        if isinstance(record, InvalidPolicy):
            log.warning("MTA-STS TXT record of %s ignored: %s", domain, record)
            return Applied(valid, TLSFailure.STS_POLICY_INVALID)
        step = next_step(cached, record, now)
        if step is Step.USE_CACHED:
            return Applied(valid)
        if step is Step.NO_POLICY or record is None:
            return Applied(None)
        failed = self._failed.get((domain, record.id))
        if failed is not None and failed[0] > now:
            return Applied(valid, failed[1])
        try:
            policy = await self._fetch(domain)
        except FetchError as exc:
            log.warning("MTA-STS policy of %s not fetched: %s", domain, exc)
            _bounded(self._failed)
            self._failed[(domain, record.id)] = (self._clock() + FAILED_FETCH_SECONDS, exc.failure)
            return Applied(valid, exc.failure)
        _bounded(self._policies)
        self._policies[domain] = fetched(record, policy, self._clock())
        return Applied(policy)

    async def _record(self, domain: str) -> STSRecord | InvalidPolicy | None:
        """The domain's STSv1 TXT record, reused for its TTL (bounded both ways);
        a DNS failure counts as no record (the cached policy, if any, holds)."""
        now = self._clock()
        remembered = self._records.get(domain)
        if remembered is not None and remembered[0] > now:
            return remembered[1]
        ttl = RECORD_MIN_SECONDS
        outcome: STSRecord | InvalidPolicy | None
        try:
            answer = await self._query(f"_mta-sts.{domain}", "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            outcome = None
        except dns.exception.DNSException as exc:
            log.info("MTA-STS TXT lookup of %s failed: %s", domain, exc.__class__.__name__)
            outcome = None
        else:
            texts = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
            try:
                outcome = parse_record(texts)
            except InvalidPolicy as exc:
                outcome = exc
            if answer.rrset is not None:
                ttl = float(answer.rrset.ttl)
        _bounded(self._records)
        seconds = min(max(ttl, RECORD_MIN_SECONDS), RECORD_MAX_SECONDS)
        self._records[domain] = (self._clock() + seconds, outcome)
        return outcome

    async def _fetch(self, domain: str) -> Policy:
        host = f"mta-sts.{domain}"
        port = "" if self._port == HTTPS_PORT else f":{self._port}"
        url = f"https://{host}{port}{POLICY_PATH}"
        try:
            async with (
                self._client() as client,
                client.get(
                    url,
                    allow_redirects=False,  # section 3.3: redirects MUST NOT be followed
                    timeout=aiohttp.ClientTimeout(total=FETCH_SECONDS),
                ) as response,
            ):
                if response.status != 200:
                    raise FetchError(
                        TLSFailure.STS_POLICY_FETCH_ERROR, f"{url}: HTTP {response.status}"
                    )
                if response.content_type != "text/plain":
                    raise FetchError(
                        TLSFailure.STS_POLICY_INVALID,
                        f"{url}: media type {response.content_type[:40]!r}, not text/plain",
                    )
                body = bytearray()
                async for chunk in response.content.iter_chunked(16384):
                    body += chunk
                    if len(body) > MAX_POLICY_BYTES:
                        raise FetchError(
                            TLSFailure.STS_POLICY_INVALID,
                            f"{url}: policy larger than {MAX_POLICY_BYTES} bytes",
                        )
        except aiohttp.ClientConnectorCertificateError as exc:
            why = f"{url}: certificate refused: {exc.certificate_error}"
            raise FetchError(TLSFailure.STS_WEBPKI_INVALID, why) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise FetchError(
                TLSFailure.STS_POLICY_FETCH_ERROR, f"{url}: {exc.__class__.__name__}: {exc}"
            ) from exc
        try:
            return parse_policy(bytes(body))
        except InvalidPolicy as exc:
            raise FetchError(TLSFailure.STS_POLICY_INVALID, f"{url}: {exc}") from exc

    def _client(self) -> aiohttp.ClientSession:
        """A client for one fetch: fetches are rare (a policy change per domain), so
        nothing is kept open and nothing needs closing when the relay stops."""
        context = ssl.create_default_context()
        if self._ca_file is not None:
            try:
                context.load_verify_locations(cafile=self._ca_file)
            except (OSError, ssl.SSLError) as exc:  # the transport logs it already
                log.debug("CA bundle %s not loaded for MTA-STS: %s", self._ca_file, exc)
        connector = aiohttp.TCPConnector(
            resolver=_PolicyHostResolver(self._query, self._destinations), ssl=context
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # no proxy from the environment: the fetch is ours
            headers={"User-Agent": "mailpipe-relay"},
        )
