"""TLSA lookups for DANE (RFC 7672): `_25._tcp.<MX host>` at the pool's
validating resolver, trusting its AD bit as Postfix does. The DNS side only;
what the records mean is `dane`.

- an answer or a validated absence (NODATA, NXDOMAIN) with AD: secure;
- the same without AD (an unsigned zone): insecure, so DANE does not apply;
- SERVFAIL (what a validating resolver answers for bogus data), a timeout or
  anything odd: `TLSALookupFailed`. RFC 7672 2.1.1: a failed lookup is not
  "no records", or an attacker who drops the answer downgrades the session;
  that host is deferred (the transport tries the next).

Answers are cached for their TTL (a failure briefly, as MX failures are), and
concurrent lookups of one name share one query.
"""

from __future__ import annotations

import asyncio
import time

import dns.exception
import dns.rdtypes.ANY.TLSA
import dns.resolver

from mailpipe.contracts.config import RelayConfig
from mailpipe.contracts.errors import TemporaryError

from .dane import TLSAAnswer, TLSARecord
from .mx import MAX_CACHE_ENTRIES, NEGATIVE_CACHE_SECONDS, authentic, stub_resolver

MIN_TTL_SECONDS = 1.0  # a TTL of 0 still serves the lookup's own connection attempts
NO_RECORDS_TTL_SECONDS = 300.0  # a validated absence, when no SOA minimum came with it


class TLSALookupFailed(TemporaryError):
    """The TLSA records of an MX host could not be determined: defer that host."""


_Cached = tuple[float, TLSAAnswer | TLSALookupFailed]


class TLSAResolver:
    """TLSA answers per (MX host, port), cached."""

    def __init__(self, config: RelayConfig) -> None:
        self._cache: dict[str, _Cached] = {}
        self._inflight: dict[str, asyncio.Future[TLSAAnswer]] = {}
        self.reconfigure(config)

    def reconfigure(self, config: RelayConfig) -> None:
        self._resolver = stub_resolver(config)
        self._cache.clear()

    async def lookup(self, host: str, port: int) -> TLSAAnswer:
        """The TLSA answer for `host`'s SMTP port; raises TLSALookupFailed."""
        name = f"_{port}._tcp.{host.rstrip('.')}."
        cached = self._cache.get(name)
        if cached is not None and cached[0] > time.monotonic():
            if isinstance(cached[1], TLSALookupFailed):
                raise cached[1]
            return cached[1]
        lookup = self._inflight.get(name)
        if lookup is None:
            lookup = asyncio.ensure_future(self._resolve(name))
            self._inflight[name] = lookup
            lookup.add_done_callback(lambda _: self._inflight.pop(name, None))
        return await asyncio.shield(lookup)

    async def _resolve(self, name: str) -> TLSAAnswer:
        try:
            answer, ttl = await self._query(name)
        except TLSALookupFailed as exc:
            self._remember(name, NEGATIVE_CACHE_SECONDS, exc)
            raise
        self._remember(name, ttl, answer)
        return answer

    async def _query(self, name: str) -> tuple[TLSAAnswer, float]:
        try:
            answer = await self._resolver.resolve(name, "TLSA", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            responses = list(exc.kwargs.get("responses", {}).values())
            secure = bool(responses) and all(authentic(r) for r in responses)
            return TLSAAnswer(secure, ()), NO_RECORDS_TTL_SECONDS
        except dns.exception.DNSException as exc:  # SERVFAIL (bogus), timeout, refused
            why = f"TLSA lookup for {name} failed: {exc.__class__.__name__}"
            raise TLSALookupFailed(why) from exc
        secure = authentic(answer.response)
        if answer.rrset is None:  # NODATA
            return TLSAAnswer(secure, ()), NO_RECORDS_TTL_SECONDS
        records = tuple(
            TLSARecord(r.usage, r.selector, r.mtype, bytes(r.cert))
            for r in answer.rrset
            if isinstance(r, dns.rdtypes.ANY.TLSA.TLSA)
        )
        return TLSAAnswer(secure, records), max(float(answer.rrset.ttl), MIN_TTL_SECONDS)

    def _remember(self, name: str, seconds: float, outcome: TLSAAnswer | TLSALookupFailed) -> None:
        now = time.monotonic()
        if len(self._cache) >= MAX_CACHE_ENTRIES:
            for key in [k for k, (until, _) in self._cache.items() if until <= now]:
                del self._cache[key]
            while len(self._cache) >= MAX_CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]
        self._cache[name] = (now + seconds, outcome)
