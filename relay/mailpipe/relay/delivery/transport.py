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
    (what each mode does is `tls_policy`'s table; this module only asks it)
    connection lost mid-transaction        -> 451 4.4.2
    destination address refused by policy  -> 550 5.4.4 (no suppression: see `mx`)
    a stage timed out (RFC 5321 4.5.3.2)   -> 421 4.4.1 (connect), 451 4.4.2 (the
        others), the text naming the stage: "no greeting within 300 s (greeting timeout)"

Every result says, per recipient, the stage whose reply decided it
(`TransactionResult.detail[recipient]`, a `ports.Stage`: "dns",
"connect", "greeting", "ehlo", "tls", "local", "mail", "rcpt", "data",
"message", "lost"), so the classifier can tell a host-level refusal
(greeting, EHLO) from a recipient-level one (RCPT) with the same code.

aiosmtplib opens each connection: source address bound to the egress IP,
greeting, EHLO with the IP's HELO name, STARTTLS per policy. The open
connection then becomes a `session.Session`, which runs the transactions
(pipelined when the server offers PIPELINING, which aiosmtplib cannot do).
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
import datetime as dt
import logging
import ssl
import time
import weakref
from typing import Any

import aiosmtplib

from mailpipe.contracts.config import RelayConfig, TLSMode

from ..addresses import ascii_domain
from ..classify import reply
from ..ports import Envelope, SMTPReply, Stage, TransactionResult
from . import dane
from .dial import Refused, StageTimeout, dial
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
from .tls_policy import TLSPlan, client_context, plan
from .tlsa import TLSALookupFailed, TLSAResolver

log = logging.getLogger("mailpipe.relay.delivery")

WATCHDOG_SECONDS = 1.0  # command timeouts are enforced to within this
IDLE_SECONDS = 30.0  # drop pooled connections older than this; many MXes cut idle ones at ~60 s
# After an opportunistic STARTTLS failed, connect to that host in clear for this
# long instead of paying a failed handshake (and a second connection) every time.
# Never under a mode that verifies: `tls_policy.TLSPlan.starttls_now`.
TLS_FALLBACK_SECONDS = 3600.0
MAX_TLS_BROKEN_HOSTS = 10_000  # hosts remembered; past it the expired ones are dropped


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


class _TLSFailed(Exception):
    """STARTTLS was offered and could not be completed: refused, handshake, certificate."""


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


def _all(
    recipients: tuple[str, ...], r: SMTPReply, stage: Stage, **extra: Any
) -> TransactionResult:
    """The same reply, from the same stage, for every recipient."""
    return TransactionResult(
        dict.fromkeys(recipients, r), detail=dict.fromkeys(recipients, stage), **extra
    )


class SMTPTransport:
    def __init__(self, config: RelayConfig, resolver: MXResolver | None = None) -> None:
        self.mx = resolver or MXResolver(config)
        self._idle: dict[tuple[str, str, int, str], list[Session]] = {}
        self.connections_opened = 0
        self._quitting: set[asyncio.Task[None]] = set()
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._watchdog: asyncio.Task[None] | None = None
        self.reconfigure(config)

    def reconfigure(self, config: RelayConfig) -> None:
        self.config = config
        self.mx.reconfigure(config)
        self._tls_broken: dict[tuple[str, int], float] = {}  # (host, port) -> clear until
        self._tls = plan(config.tls)
        self._tlsa = TLSAResolver(config) if self._tls.mode is TLSMode.DANE else None
        self._tls_context, self._ca_problem = client_context(self._tls, config.tls.ca_file)
        if self._ca_problem is not None:
            log.error(
                "%s; certificates are checked against the system's CAs only", self._ca_problem
            )

    async def _watch(self) -> None:
        """Enforce command timeouts on every open session (see Session.check_deadline)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCHDOG_SECONDS)
            now = loop.time()
            for session in list(self._sessions):
                session.check_deadline(now)

    async def deliver(self, envelope: Envelope) -> TransactionResult:
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        rcpts = envelope.recipients
        try:
            routes = await self.mx.routes(envelope.domain)
        except Exception as exc:
            return _all(rcpts, dns_failure(exc, envelope.domain), Stage.DNS)
        last, stage = reply(421, "4.4.1 no MX host accepted a connection"), Stage.CONNECT
        for route in routes:
            for fresh_only in (False, True):
                try:
                    conn, reused = await self._acquire(envelope, route, fresh_only)
                except CONNECT_FAILURES as exc:
                    last, stage = connect_failure(exc, route.name)
                    break
                try:
                    replies, stages = await conn.transaction(
                        envelope.sender, rcpts, envelope.message, envelope.gate
                    )
                except asyncio.CancelledError:
                    conn.close()  # cut mid-transaction (tarpit budget, shutdown): never pooled
                    raise
                except ConnectionLost as exc:
                    if reused and not exc.body_sent:
                        # A stale pooled connection: try once more on a new one. Its
                        # MAIL FROM may have arrived, so the retry takes a new token.
                        if envelope.gate is not None:
                            envelope.gate.renew()
                        continue
                    lost = reply(451, f"4.4.2 {exc}")  # the text names the host already
                    return _all(rcpts, lost, Stage.LOST, mx_host=route.name)
                self._release(envelope, route, conn)
                return TransactionResult(replies, mx_host=route.name, detail=stages)
        return _all(rcpts, last, stage)

    async def _acquire(self, env: Envelope, route: Route, fresh_only: bool) -> tuple[Session, bool]:
        # The MX name is part of the key: a connection whose certificate was
        # checked for one name is not a checked connection for another.
        key = (env.egress_address, route.host, route.port, route.name)
        idle = self._idle.get(key, [])
        now = time.monotonic()
        while idle and not fresh_only:
            conn = idle.pop()
            if conn.is_open and now - conn.last_used < IDLE_SECONDS:
                return conn, True
            conn.close()
        return await self._open(env, route), False

    async def _route_plan(self, env: Envelope, route: Route) -> tuple[TLSPlan, _DaneCheck | None]:
        """The TLS plan for this MX host: the pool's, or in mode dane what the
        host's TLSA records give (`dane.policy`; looked up only on a DNSSEC-
        validated route). Raises TLSALookupFailed."""
        if self._tlsa is None:
            return self._tls, None
        answer = await self._tlsa.lookup(route.name, route.port) if route.secure else None
        decided = dane.policy(route.name, route.secure, answer)
        log.debug("DANE %s: %s", decided.plan.mode.value, decided.why)
        if not decided.records:
            return decided.plan, None
        return decided.plan, (decided.records, (route.name, ascii_domain(env.domain)))

    async def _open(self, env: Envelope, route: Route) -> Session:
        """A new session; an opportunistic STARTTLS that fails is retried in clear."""
        tls, dane_check = await self._route_plan(env, route)
        host = (route.host, route.port)
        now = time.monotonic()
        starttls = tls.starttls_now(self._tls_broken.get(host, 0.0), now)
        try:
            return await self._connect(env, route, tls, dane_check, starttls=starttls)
        except _TLSFailed as exc:
            if not tls.clear_on_failure:  # required, verify, dane: defer, never clear
                raise
            # Opportunistic TLS (RFC 3207 4.1, as Postfix's "may"): a failed
            # handshake leaves the connection unusable, so a new one goes in clear.
            log.warning("STARTTLS with %s failed, delivering in clear: %s", route.name, exc)
            if len(self._tls_broken) >= MAX_TLS_BROKEN_HOSTS:
                self._tls_broken = {h: t for h, t in self._tls_broken.items() if t > now}
            self._tls_broken[host] = now + TLS_FALLBACK_SECONDS
            return await self._connect(env, route, tls, None, starttls=False)

    async def _connect(
        self,
        env: Envelope,
        route: Route,
        tls: TLSPlan,
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
            validate_certs=tls.verify,
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
            if starttls and smtp.supports_extension("starttls"):
                await self._starttls(smtp, route, dane_check)
            elif not tls.clear_on_failure:
                raise _NoTLS()
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
            transport = smtp.transport
            if not isinstance(transport, asyncio.Transport) or transport.is_closing():
                raise aiosmtplib.SMTPServerDisconnected("connection closed during EHLO")
        except BaseException:
            smtp.close()
            raise
        session = Session(
            transport, dict(smtp.esmtp_extensions), timeouts=timeouts, host=route.name
        )
        self._sessions.add(session)
        return session

    async def _starttls(
        self, smtp: aiosmtplib.SMTP, route: Route, dane_check: _DaneCheck | None
    ) -> None:
        """STARTTLS, the certificate checked (mode verify) against the MX host
        NAME as MTA-STS (RFC 8461) and DANE expect, never the address connected to;
        or (mode dane, usable TLSA records) against the records, before anything
        else is sent; every way it can fail is `_TLSFailed`. The server name
        (SNI) is the MX host name, which RFC 7672 8.1 asks for under DANE too."""
        try:
            await smtp.starttls(server_hostname=route.name, tls_context=self._tls_context)
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
                    raise _TLSFailed(f"DANE: {problem} (TLSA _{route.port}._tcp.{route.name})")
            # RFC 3207: forget what was offered in clear and ask again. (aiosmtplib
            # would do it lazily before its next command; the session won't.)
            await smtp.ehlo()
        except _TLSFailed:
            raise
        except ssl.SSLCertVerificationError as exc:
            why = f" ({self._ca_problem})" if self._ca_problem else ""
            raise _TLSFailed(
                f"certificate of {route.name} refused: {exc.verify_message}{why}"
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:  # e.g. "454 TLS not available"
            raise _TLSFailed(f"STARTTLS refused: {exc.code} {exc.message}") from exc
        except (TimeoutError, OSError, aiosmtplib.SMTPException) as exc:
            raise _TLSFailed(f"TLS handshake failed: {exc.__class__.__name__}: {exc}") from exc

    def _release(self, env: Envelope, route: Route, conn: Session) -> None:
        """Pool the connection for the next transaction, or close it: the envelope
        carries the destination's messages-per-connection limit (the scheduler's
        shaping decides it; the transport only counts)."""
        limit = env.messages_per_connection
        if (limit is not None and conn.sent >= limit) or not conn.is_open:
            task = asyncio.get_running_loop().create_task(conn.quit())
            self._quitting.add(task)
            task.add_done_callback(self._quitting.discard)
            return
        key = (env.egress_address, route.host, route.port, route.name)
        self._idle.setdefault(key, []).append(conn)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        await asyncio.gather(*(c.quit() for c in conns), *self._quitting)
