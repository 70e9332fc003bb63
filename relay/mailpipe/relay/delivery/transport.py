"""The SMTP transport: connections per (egress IP, MX host), reused across transactions.

Implements `ports.Transport`. Every failure becomes an SMTP reply for every
recipient it touched, here and only here (third-party exceptions are mapped
once, at this boundary), so the engine's classifier decides all dispositions:

    null MX              -> 556 5.1.10      domain without MX or address -> 550 5.1.2
    DNS timeout/failure  -> 451 4.4.3       every MX refused or timed out  -> 421 4.4.1
    invalid domain name  -> 553 5.1.3       address literal u@[192.0.2.1]  -> 550 5.1.2
    MX names an IP address, not a host      -> 550 5.4.4 (no suppression: their DNS is broken)
    TLS required or verify, absent -> 451 4.7.5 (no backoff: our policy, not theirs)
    TLS required or verify, STARTTLS failed (refused, handshake, certificate) -> 451 4.7.5
    opportunistic TLS, STARTTLS failed -> the same host again in clear (RFC 3207 4.1)
    dane: TLSA lookup failed -> 451 4.7.5; certificate matches no usable TLSA record -> 451 4.7.5
    (the next MX host is tried; `dane` says which plan each host's TLSA answer gives)
    mta-sts enforce, no MX host matches the policy -> 451 4.7.5, nothing sent
    mta-sts testing, certificate refused -> reported, the same host again unverified
    (what each mode does is `tls_policy`'s table; this module only asks it)
    connection lost mid-transaction        -> 451 4.4.2
    destination address refused by policy  -> 550 5.4.4 (no suppression: see `mx`)
    a stage timed out (RFC 5321 4.5.3.2)   -> 421 4.4.1 (connect), 451 4.4.2 (the
        others), the text naming the stage: "no greeting within 300 s (greeting timeout)"

Every result says, per recipient, the stage whose reply decided it
(`TransactionResult.detail[recipient]`, a `ports.Stage`: "dns",
"connect", "greeting", "ehlo", "tls", "local", "mail", "rcpt", "data",
"message", "lost"), so the classifier can tell a host-level refusal
(greeting, EHLO) from a recipient-level one (RCPT) with the same code, and
the TLS of the attempt (`TransactionResult.tls`: mode, destination policy,
protocol, verified or why not), which events and metrics carry.

aiosmtplib opens each connection: source address bound to the egress IP,
greeting, EHLO with the IP's HELO name, STARTTLS per policy. The open
connection then becomes a `session.Session`, which runs the transactions
(pipelined when the server offers PIPELINING, which aiosmtplib cannot do).
Idle connections wait in `connection_cache`, which bounds their idle time and
age per destination and ends them with QUIT on a timer (this module's watchdog).
A pooled connection found dead before the message went out is replaced by a
fresh one and the transaction tried again; once the message was sent, a lost
connection is a deferral (it may have arrived: at-least-once, never lost).

The record's rate token (`Envelope.gate`) is taken by the session on the
greeted connection, right before MAIL FROM (ARCHITECTURE.md, "Limits hold pool-wide"): nothing here
takes it, so connect, greeting, EHLO and STARTTLS never spend a token, and a failure
before MAIL FROM leaves it untouched. The stale-connection retry renews it:
the first MAIL FROM may have arrived, so the retry takes its own.

(Over 300 lines: opening connections and mapping every way they fail to a
reply with its stage are one boundary; split, each half would re-raise the
other's exceptions.)
"""

from __future__ import annotations

import _ssl
import asyncio
import dataclasses
import datetime as dt
import logging
import ssl
import time
import weakref
from types import MappingProxyType
from typing import Any, Final, cast

import aiosmtplib

from mailpipe.contracts.config import RelayConfig, TLSMode
from mailpipe.contracts.tls_outcome import CLEAR, TLSFailure, TLSOutcome

from ..addresses import ascii_domain
from ..classify import reply
from ..metrics import RelayMetrics
from ..ports import Envelope, SMTPReply, Stage, TransactionResult
from . import dane
from .connection_cache import ConnectionCache, ReuseLimits
from .dial import Refused, StageTimeout, dial
from .mta_sts import STSMode, sts_plan
from .mta_sts_fetch import Applied, PolicyFetcher
from .mx import (
    AddressLiteral,
    InvalidDomain,
    MXResolver,
    NoSuchDomain,
    NullMX,
    Route,
    TemporaryDNSError,
    UnroutableDomain,
)
from .session import ConnectionLost, Session
from .tls_policy import TLSPlan, client_context, destination_plan, plan
from .tlsa import TLSALookupFailed, TLSAResolver

log = logging.getLogger("mailpipe.relay.delivery")

WATCHDOG_SECONDS = 1.0  # command timeouts and connection reuse limits are enforced to within this
# After an opportunistic STARTTLS failed, connect to that host in clear for this
# long instead of paying a failed handshake (and a second connection) every time.
# Never under a mode that verifies: `tls_policy.TLSPlan.starttls_now`.
TLS_FALLBACK_SECONDS = 3600.0
MAX_TLS_BROKEN_HOSTS = 10_000  # hosts remembered; past it the expired ones are dropped
MAX_REMEMBERED_DOMAINS = 10_000  # domains whose reuse limits are kept looked up; then forgotten
# TLS outcomes kept made (`_tls_outcome`): modes x policies x failures x protocols
# is a few hundred; the bound only guards against a protocol string per server.
MAX_TLS_OUTCOMES = 1024


def dns_failure(exc: Exception, domain: str) -> SMTPReply:
    """The reply every recipient gets when the MX lookup of `domain` raised `exc`."""
    match exc:
        case AddressLiteral():
            return reply(550, f"5.1.2 {exc}: address literals are not delivered to")
        case InvalidDomain():
            return reply(553, f"5.1.3 invalid domain: {exc}")
        case NullMX():
            return reply(556, f"5.1.10 {exc}")
        case NoSuchDomain():
            return reply(550, f"5.1.2 {exc}")
        case UnroutableDomain():
            return reply(550, f"5.4.4 {exc}")
        case TemporaryDNSError():
            return reply(451, f"4.4.3 DNS lookup failed: {exc}")
    # a resolver bug must defer the record, never kill the lane
    log.error("MX lookup for %r failed unexpectedly", domain, exc_info=exc)
    return reply(451, f"4.4.3 DNS lookup failed: {exc.__class__.__name__}")


class _NoTLS(Exception):
    """TLS is required by policy and the server does not offer STARTTLS."""

    failure = TLSFailure.STARTTLS_NOT_SUPPORTED


class _TLSFailed(Exception):
    """STARTTLS was offered and could not be completed: refused, handshake, certificate."""

    def __init__(self, why: str, failure: TLSFailure = TLSFailure.STARTTLS_FAILED) -> None:
        super().__init__(why)
        self.failure = failure


# OpenSSL's X509_V_ERR_* codes of a refused certificate, as RFC 8460 result types.
_CERT_FAILURES: Final = MappingProxyType(
    {
        62: TLSFailure.CERTIFICATE_HOST_MISMATCH,  # X509_V_ERR_HOSTNAME_MISMATCH
        10: TLSFailure.CERTIFICATE_EXPIRED,  # X509_V_ERR_CERT_HAS_EXPIRED
        2: TLSFailure.CERTIFICATE_NOT_TRUSTED,  # unable to get issuer certificate
        18: TLSFailure.CERTIFICATE_NOT_TRUSTED,  # self-signed certificate
        19: TLSFailure.CERTIFICATE_NOT_TRUSTED,  # self-signed certificate in chain
        20: TLSFailure.CERTIFICATE_NOT_TRUSTED,  # unable to get local issuer certificate
        21: TLSFailure.CERTIFICATE_NOT_TRUSTED,  # unable to verify the first certificate
    }
)


def peer_chain(ssl_object: Any) -> list[bytes]:
    """The certificates the server sent, leaf first, DER. DANE-TA needs the whole
    chain, which the ssl module makes public only from Python 3.13
    (`SSLObject.get_unverified_chain`); before it, the same method of its
    private `_sslobj` (there since 3.10). tests/test_dependency_internals.py
    fails, naming it, if a Python upgrade removes both."""
    public = getattr(ssl_object, "get_unverified_chain", None)
    chain = public() if public is not None else ssl_object._sslobj.get_unverified_chain()
    return [c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in chain or ()]


# What DANE asks of one connection: the usable TLSA records and the names a
# DANE-TA certificate may be for (the MX host, then the next-hop domain).
_DaneCheck = tuple[tuple[dane.TLSARecord, ...], tuple[str, ...]]


# What opening a connection to one MX host may raise; each is that host's reply.
CONNECT_FAILURES = (
    _NoTLS,
    TLSALookupFailed,
    Refused,
    StageTimeout,
    _TLSFailed,
    aiosmtplib.SMTPException,
    TimeoutError,
    OSError,
)


def connect_failure(exc: BaseException, host: str) -> tuple[SMTPReply, Stage]:
    """The reply and stage for a connection to MX `host` that could not be opened
    (nothing was sent; the next host, if any, is tried)."""
    match exc:
        case _NoTLS():
            offered = f"4.7.5 STARTTLS required by policy, not offered by {host}"
            return reply(451, offered), Stage.TLS
        case Refused():
            return reply(550, f"5.4.4 {exc}"), Stage.DNS
        case StageTimeout():
            code, status = (421, "4.4.1") if exc.stage is Stage.CONNECT else (451, "4.4.2")
            return reply(code, f"{status} {host}: {exc}"), exc.stage
        case _TLSFailed():  # TLS required: defer, nothing sent
            return reply(451, f"4.7.5 TLS with {host} failed: {exc}"), Stage.TLS
        case TLSALookupFailed():  # dane: unknown records are not "no records"
            return reply(451, f"4.7.5 {exc}"), Stage.TLS
        case aiosmtplib.SMTPConnectResponseError():  # e.g. 421 at greeting
            return reply(exc.code, exc.message), Stage.GREETING
        case aiosmtplib.SMTPResponseException():
            return reply(exc.code, exc.message), Stage.EHLO
    return reply(421, f"4.4.1 {host}: {exc.__class__.__name__}: {exc}"), Stage.CONNECT


@dataclasses.dataclass(frozen=True)
class _Negotiated:
    """What a connection's STARTTLS gave: the protocol or `clear`, whether the
    certificate was checked, and what failed on the way (reported, not fatal)."""

    protocol: str
    verified: bool
    failure: TLSFailure | None


_UNKNOWN = _Negotiated(CLEAR, False, None)


def _all(
    recipients: tuple[str, ...], r: SMTPReply, stage: Stage, **extra: Any
) -> TransactionResult:
    """The same reply, from the same stage, for every recipient."""
    return TransactionResult(
        dict.fromkeys(recipients, r), detail=dict.fromkeys(recipients, stage), **extra
    )


# What a pooled connection is for: egress IP, MX host, port, MX name, TLS plan.
_PoolKey = tuple[str, str, int, str, TLSPlan]


class SMTPTransport:
    def __init__(
        self,
        config: RelayConfig,
        resolver: MXResolver | None = None,
        *,
        metrics: RelayMetrics | None = None,
    ) -> None:
        self.mx = resolver or MXResolver(config)
        counted = metrics.connections_closed if metrics is not None else None
        self._cache: ConnectionCache[_PoolKey, Session] = ConnectionCache(
            time.monotonic,
            closed=(lambda r: counted.labels(r).inc()) if counted is not None else lambda _r: None,
        )
        # what each open session's handshake gave (protocol, verified, failure)
        self._negotiated: weakref.WeakKeyDictionary[Session, _Negotiated] = (
            weakref.WeakKeyDictionary()
        )
        self.connections_opened = 0
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._site_of: weakref.WeakKeyDictionary[Session, str] = weakref.WeakKeyDictionary()
        self._watchdog: asyncio.Task[None] | None = None
        self._outcomes: dict[tuple[Any, ...], TLSOutcome] = {}
        self.reconfigure(config)

    def reconfigure(self, config: RelayConfig) -> None:
        self.config = config
        self.mx.reconfigure(config)
        self._reuse_limits: dict[str, ReuseLimits] = {}  # domain -> its throttle's, this config's
        self._plans: dict[str, TLSPlan] = {}  # domain -> `destination_plan`, this config's
        self._tls_broken: dict[tuple[str, int], float] = {}  # (host, port) -> clear until
        # The pool's plan and each site's (`tls.sites`): whatever any destination may
        # get decides which helpers exist (a TLSA resolver, an MTA-STS fetcher, a
        # verifying context), so one dane or mta-sts site works in any pool.
        self._tls = plan(config.tls)
        plans = {self._tls, *(plan(site) for site in config.tls.sites.values())}
        modes = {p.mode for p in plans}
        self._tlsa = TLSAResolver(config) if TLSMode.DANE in modes else None
        # one client context per verify flag (loading CAs per connection is costly)
        self._contexts: dict[bool, ssl.SSLContext] = {}
        self._ca_problem: str | None = None
        for verify in sorted({p.verify for p in plans} | {TLSMode.MTA_STS in modes}):
            flagged = dataclasses.replace(self._tls, verify=verify)
            self._contexts[verify], self._ca_problem = client_context(flagged, config.tls.ca_file)
        self._sts: PolicyFetcher | None = None
        if TLSMode.MTA_STS in modes:
            self._sts = PolicyFetcher(self.mx.query, config.delivery, config.tls.ca_file)
        if self._ca_problem is not None:
            log.error(
                "%s; certificates are checked against the system's CAs only", self._ca_problem
            )

    async def _watch(self) -> None:
        """Enforce command timeouts on every open session (see Session.check_deadline)
        and the reuse limits of idle ones (`ConnectionCache.sweep`)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCHDOG_SECONDS)
            now = loop.time()
            for session in list(self._sessions):
                session.check_deadline(now)
            self._cache.sweep()

    async def deliver(self, envelope: Envelope) -> TransactionResult:
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        rcpts = envelope.recipients
        try:
            routes = await self.mx.routes(envelope.domain)
        except Exception as exc:
            return _all(rcpts, dns_failure(exc, envelope.domain), Stage.DNS)
        tls_plan, sts = await self._destination_plan(envelope.domain)
        policy = sts.policy if sts is not None else None
        outcome = self._tls_outcome(
            tls_plan.mode.value,
            policy.mode.value if policy is not None else None,
            sts.failure if sts is not None else None,
        )
        if policy is not None and policy.mode is STSMode.ENFORCE:
            # RFC 8461 section 5: only MX hosts the policy lists are used
            routes = [r for r in routes if policy.allows(r.name)]
            if not routes:
                why = f"4.7.5 no MX host of {envelope.domain} matches its MTA-STS policy"
                mismatch = outcome.model_copy(update={"failure": TLSFailure.MX_MISMATCH})
                return _all(rcpts, reply(451, why), Stage.TLS, tls=mismatch)
        last, stage = reply(421, "4.4.1 no MX host accepted a connection"), Stage.CONNECT
        last_tls: TLSOutcome | None = None
        for route in routes:
            for fresh_only in (False, True):
                try:
                    conn, reused = await self._acquire(envelope, route, fresh_only, tls_plan)
                except CONNECT_FAILURES as exc:
                    last, stage = connect_failure(exc, route.name)
                    if isinstance(exc, _NoTLS | _TLSFailed):
                        last_tls = outcome.model_copy(update={"failure": exc.failure})
                    break
                testing = policy is not None and policy.mode is STSMode.TESTING
                listed = not testing or (policy is not None and policy.allows(route.name))
                tls = self._outcome(conn, outcome, listed)
                try:
                    replies, stages = await conn.transaction(
                        envelope.sender, rcpts, envelope.message, envelope.gate
                    )
                except asyncio.CancelledError:
                    conn.close()  # cut mid-transaction (tarpit budget, shutdown): never pooled
                    raise
                except ConnectionLost as exc:
                    self._cache.discard(conn)
                    if reused and not exc.body_sent:
                        # A stale pooled connection: try once more on a new one. Its
                        # MAIL FROM may have arrived, so the retry takes a new token.
                        if envelope.gate is not None:
                            envelope.gate.renew()
                        continue
                    lost = reply(451, f"4.4.2 {exc}")  # the text names the host already
                    return _all(rcpts, lost, Stage.LOST, mx_host=route.name, tls=tls)
                self._release(envelope, route, conn, tls_plan)
                return TransactionResult(replies, mx_host=route.name, detail=stages, tls=tls)
        return _all(rcpts, last, stage, tls=last_tls)

    async def _destination_plan(self, domain: str) -> tuple[TLSPlan, Applied | None]:
        """The TLS plan for `domain`: its site's or the pool's (`destination_plan`),
        and under mode mta-sts what the domain's policy says (never an exception:
        see `mta_sts_fetch`)."""
        site_plan = self._plans.get(domain)
        if site_plan is None:  # the site and group match (fnmatch) once per domain, not per message
            if len(self._plans) >= MAX_REMEMBERED_DOMAINS:
                self._plans.clear()
            site_plan = self._plans[domain] = destination_plan(self.config, domain)
        if site_plan.mode is not TLSMode.MTA_STS or self._sts is None:
            return site_plan, None
        sts = await self._sts.applied(ascii_domain(domain))
        return sts_plan(sts.policy), sts

    def _tls_outcome(
        self,
        mode: str,
        policy: str | None,
        failure: TLSFailure | None,
        negotiated: _Negotiated | None = None,
    ) -> TLSOutcome:
        """A destination's TLS before a connection (`negotiated` None), or an
        attempt's on a connection. Made once per combination and shared: the
        outcome is frozen and every field comes from a small fixed set, and
        building a pydantic model twice per message was 2% of the relay's CPU."""
        key = (mode, policy, failure, negotiated)
        found = self._outcomes.get(key)
        if found is None:
            if len(self._outcomes) >= MAX_TLS_OUTCOMES:
                self._outcomes.clear()
            if negotiated is None:
                found = TLSOutcome(mode=mode, policy=policy, failure=failure)
            else:
                found = TLSOutcome(
                    mode=mode,
                    policy=policy,
                    protocol=negotiated.protocol,
                    verified=negotiated.verified,
                    failure=failure,
                )
            self._outcomes[key] = found
        return found

    def _outcome(self, conn: Session, base: TLSOutcome, listed: bool) -> TLSOutcome:
        """The TLS of an attempt on `conn`: what its handshake gave, under this
        destination's mode and policy (a pooled connection serves several)."""
        negotiated = self._negotiated.get(conn, _UNKNOWN)
        failure = negotiated.failure or base.failure
        if not listed:  # mta-sts testing, an MX the policy does not list: reported
            failure = failure or TLSFailure.MX_MISMATCH
        return self._tls_outcome(base.mode, base.policy, failure, negotiated)

    async def _acquire(
        self, env: Envelope, route: Route, fresh_only: bool, tls_plan: TLSPlan
    ) -> tuple[Session, bool]:
        # The MX name and the TLS plan are part of the key: a connection whose
        # certificate was checked for one name is not a checked connection for
        # another, and one opened unverified never serves a destination that
        # enforces verification (mta-sts: destinations sharing an MX differ).
        key = (env.egress_address, route.host, route.port, route.name, tls_plan)
        pooled = None if fresh_only else self._cache.take(key)
        if pooled is not None:
            return pooled, True
        await self._make_room(env)
        conn = await self._open(env, route, tls_plan)
        self._cache.opened(conn)
        self._site_of[conn] = env.site
        return conn, False

    async def _make_room(self, env: Envelope) -> None:
        """Before a new connection of the site: close (QUIT) its idle pooled ones
        that would put it over its connection limit. The scheduler's lanes hold
        the site's slots, one connection each in use; what a lane left in the
        pool for another MX host of the site (gmail.com's and a Workspace
        domain's are different hosts) is open too, and the receiver counts it.
        Waits for the goodbye, so the receiver never sees one more."""
        limit = env.max_connections
        if limit is None:
            return
        mine = [s for s in self._sessions if s.is_open and self._site_of.get(s) == env.site]
        excess = len(mine) + 1 - limit
        if excess > 0:
            await self._cache.make_room(excess, lambda s: self._site_of.get(s) == env.site)

    async def _route_plan(
        self, env: Envelope, route: Route, tls_plan: TLSPlan
    ) -> tuple[TLSPlan, _DaneCheck | None]:
        """The TLS plan for this MX host: the destination's (`tls_plan`), or in mode
        dane what the host's TLSA records give (`dane.policy`; looked up only on a
        DNSSEC-validated route). Raises TLSALookupFailed."""
        if tls_plan.mode is not TLSMode.DANE or self._tlsa is None:
            return tls_plan, None
        answer = await self._tlsa.lookup(route.name, route.port) if route.secure else None
        decided = dane.policy(route.name, route.secure, answer)
        log.debug("DANE %s: %s", decided.plan.mode.value, decided.why)
        if not decided.records:
            return decided.plan, None
        return decided.plan, (decided.records, (route.name, ascii_domain(env.domain)))

    async def _open(self, env: Envelope, route: Route, tls_plan: TLSPlan) -> Session:
        """A new session; an opportunistic STARTTLS that fails is retried in clear,
        an MTA-STS `testing` one whose certificate is refused retried unverified;
        in mode dane the host's TLSA records decide its plan (`_route_plan`)."""
        tls_plan, dane_check = await self._route_plan(env, route, tls_plan)
        host = (route.host, route.port)
        now = time.monotonic()
        starttls = tls_plan.starttls_now(self._tls_broken.get(host, 0.0), now)
        try:
            return await self._connect(env, route, tls_plan, dane_check, starttls=starttls)
        except _TLSFailed as exc:
            if not tls_plan.clear_on_failure:  # required, verify, dane: defer, never clear
                raise
            if tls_plan.verify:
                # MTA-STS testing (RFC 8461 section 5): report what enforce would
                # refuse, deliver as without a policy (opportunistic).
                log.warning("MTA-STS testing: %s; delivering unverified", exc)
                unverified = dataclasses.replace(tls_plan, verify=False)
                conn = await self._open(env, route, unverified)
                self._negotiated[conn] = dataclasses.replace(
                    self._negotiated.get(conn, _UNKNOWN), failure=exc.failure
                )
                return conn
            # Opportunistic TLS (RFC 3207 4.1, as Postfix's "may"): a failed
            # handshake leaves the connection unusable, so a new one goes in clear.
            log.warning("STARTTLS with %s failed, delivering in clear: %s", route.name, exc)
            if len(self._tls_broken) >= MAX_TLS_BROKEN_HOSTS:
                self._tls_broken = {h: t for h, t in self._tls_broken.items() if t > now}
            self._tls_broken[host] = now + TLS_FALLBACK_SECONDS
            conn = await self._connect(env, route, tls_plan, None, starttls=False)
            self._negotiated[conn] = _Negotiated(CLEAR, False, exc.failure)
            return conn

    async def _connect(
        self,
        env: Envelope,
        route: Route,
        tls_plan: TLSPlan,
        dane_check: _DaneCheck | None,
        *,
        starttls: bool,
    ) -> Session:
        timeouts = self.config.delivery.timeouts
        sock = await dial(env.egress_address, route, self.config.delivery)
        smtp = aiosmtplib.SMTP(
            local_hostname=env.helo,
            sock=sock,
            timeout=timeouts.ehlo_seconds,  # EHLO and STARTTLS; the greeting's is below
            start_tls=False,  # decided below, per policy
            validate_certs=tls_plan.verify,
        )
        try:
            await smtp.connect(timeout=timeouts.greeting_seconds)
        except aiosmtplib.SMTPConnectTimeoutError:
            sock.close()
            raise StageTimeout(Stage.GREETING, "no greeting", timeouts.greeting_seconds) from None
        except BaseException:
            sock.close()
            raise
        self.connections_opened += 1
        try:
            try:
                await smtp.ehlo()
            except aiosmtplib.SMTPTimeoutError:
                raise StageTimeout(Stage.EHLO, "no reply to EHLO", timeouts.ehlo_seconds) from None
            negotiated = _Negotiated(CLEAR, False, None)
            if starttls and smtp.supports_extension("starttls"):
                await self._starttls(smtp, route, tls_plan.verify, dane_check)
                ssl_object = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
                version = ssl_object.version() if ssl_object is not None else None
                verified = tls_plan.verify or dane_check is not None
                negotiated = _Negotiated(version or "other", verified, None)
            elif not tls_plan.clear_on_failure:
                raise _NoTLS()
            elif starttls:
                negotiated = _Negotiated(CLEAR, False, TLSFailure.STARTTLS_NOT_SUPPORTED)
            # Taking aiosmtplib's transport over (handed to `session.Session`,
            # which installs its own protocol with asyncio's public
            # `Transport.set_protocol`). Why: aiosmtplib cannot pipeline (RFC
            # 2920) nor give each stage its own timeout. `SMTP.transport` is a
            # public attribute, but using it after aiosmtplib is done is not a
            # documented use: it relies on aiosmtplib holding no unread bytes,
            # timers or tasks on the connection once EHLO/STARTTLS returned.
            # The public replacement would be a client that pipelines, or our
            # own greeting, EHLO and STARTTLS (`loop.start_tls`) in `session`.
            # aiosmtplib is pinned to the minor tested (pyproject.toml) and
            # tests/test_dependency_internals.py fails, naming the attribute,
            # when an upgrade changes what this relies on.
            # Not isinstance(asyncio.Transport): uvloop's transports implement it
            # without deriving from it.
            transport = cast(asyncio.Transport | None, smtp.transport)
            if transport is None or transport.is_closing():
                raise aiosmtplib.SMTPServerDisconnected("connection closed during EHLO")
        except BaseException:
            smtp.close()
            raise
        session = Session(
            transport, dict(smtp.esmtp_extensions), timeouts=timeouts, host=route.name
        )
        self._sessions.add(session)
        self._negotiated[session] = negotiated
        return session

    async def _starttls(
        self,
        smtp: aiosmtplib.SMTP,
        route: Route,
        verify: bool,
        dane_check: _DaneCheck | None = None,
    ) -> None:
        """STARTTLS, the certificate checked (mode verify) against the MX host
        NAME as MTA-STS (RFC 8461) and DANE expect, never the address connected to;
        or (mode dane, usable TLSA records) against the records, before anything
        else is sent; every way it can fail is `_TLSFailed`. The server name
        (SNI) is the MX host name, which RFC 7672 8.1 asks for under DANE too."""
        try:
            context = self._contexts[verify]
            await smtp.starttls(server_hostname=route.name, tls_context=context)
            if dane_check is not None:
                records, names = dane_check
                transport = smtp.transport
                ssl_object = transport.get_extra_info("ssl_object") if transport else None
                if ssl_object is None:
                    raise _TLSFailed("DANE: no TLS session to check after STARTTLS")
                chain = peer_chain(ssl_object)
                problem = dane.check_chain(records, chain, names, dt.datetime.now(dt.UTC))
                if problem is not None:
                    # Not a word more to an unauthenticated server, not even QUIT:
                    # abort drops the TLS session and its socket at once (a
                    # graceful close would outlive the connection's owner).
                    transport.abort()  # type: ignore[union-attr]
                    raise _TLSFailed(
                        f"DANE: {problem} (TLSA _{route.port}._tcp.{route.name})",
                        TLSFailure.TLSA_INVALID,
                    )
            # RFC 3207: forget what was offered in clear and ask again. (aiosmtplib
            # would do it lazily before its next command; the session won't.)
            await smtp.ehlo()
        except _TLSFailed:
            raise
        except ssl.SSLCertVerificationError as exc:
            why = f" ({self._ca_problem})" if self._ca_problem else ""
            raise _TLSFailed(
                f"certificate of {route.name} refused: {exc.verify_message}{why}",
                _CERT_FAILURES.get(exc.verify_code, TLSFailure.VALIDATION_FAILURE),
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:  # e.g. "454 TLS not available"
            raise _TLSFailed(f"STARTTLS refused: {exc.code} {exc.message}") from exc
        except (TimeoutError, OSError, aiosmtplib.SMTPException) as exc:
            raise _TLSFailed(f"TLS handshake failed: {exc.__class__.__name__}: {exc}") from exc

    def _release(self, env: Envelope, route: Route, conn: Session, tls_plan: TLSPlan) -> None:
        """Give the connection back to the cache, which pools or QUITs it: the
        envelope carries the destination's messages-per-connection limit (the
        scheduler's shaping decides it; the transport only counts), the config its
        site's reuse limits (an MX host serving several sites keeps the limits of
        the last one it served)."""
        limit = env.messages_per_connection
        site = env.site or env.domain
        limits = self._reuse_limits.get(site)
        if limits is None:  # the group match (fnmatch) once per site, not per message
            throttle = (
                self.config.throttle_for_site(env.site)
                if env.site
                else self.config.throttle_for(env.domain)
            )
            limits = ReuseLimits(
                throttle.connection_idle_seconds, throttle.connection_max_age_seconds
            )
            if len(self._reuse_limits) >= MAX_REMEMBERED_DOMAINS:
                self._reuse_limits.clear()
            self._reuse_limits[site] = limits
        key = (env.egress_address, route.host, route.port, route.name, tls_plan)
        spent = limit is not None and conn.sent >= limit
        self._cache.give_back(key, conn, limits, spent=spent)

    async def close(self) -> None:
        await self._cache.close()  # the watchdog still bounds each QUIT's wait for its reply
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
