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
concurrent lookups of one name share one query (`lookups.CachedLookups`, as
for MX).
"""

from __future__ import annotations

import dns.exception
import dns.rdtypes.ANY.TLSA
import dns.resolver

from mailpipe.contracts.config import RelayConfig
from mailpipe.contracts.errors import TemporaryError

from .dane import TLSAAnswer, TLSARecord
from .lookups import CachedLookups
from .mx import NEGATIVE_CACHE_SECONDS, authentic, stub_resolver

MIN_TTL_SECONDS = 1.0  # a TTL of 0 still serves the lookup's own connection attempts
NO_RECORDS_TTL_SECONDS = 300.0  # a validated absence, when no SOA minimum came with it


class TLSALookupFailed(TemporaryError):
    """The TLSA records of an MX host could not be determined: defer that host."""


class TLSAResolver:
    """TLSA answers per (MX host, port), cached."""

    def __init__(self, config: RelayConfig) -> None:
        self._lookups = CachedLookups(self._query, {TLSALookupFailed: NEGATIVE_CACHE_SECONDS})
        self.reconfigure(config)

    def reconfigure(self, config: RelayConfig) -> None:
        self._resolver = stub_resolver(config)
        self._lookups.clear()

    async def lookup(self, host: str, port: int) -> TLSAAnswer:
        """The TLSA answer for `host`'s SMTP port; raises TLSALookupFailed."""
        return await self._lookups.get(f"_{port}._tcp.{host.rstrip('.')}.")

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
