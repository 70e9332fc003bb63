"""The SMTP transport: connections per (egress IP, MX host), reused across transactions.

Implements `ports.Transport`. Every failure becomes an SMTP reply for every
recipient it touched, here and only here (third-party exceptions are mapped
once, at this boundary), so the engine's classifier decides all dispositions:

    null MX              -> 556 5.1.10      domain without MX or address -> 550 5.1.2
    DNS timeout/failure  -> 451 4.4.3       every MX refused or timed out  -> 421 4.4.1
    TLS required, absent -> 451 4.7.5 (no backoff: our policy, not theirs)
    connection lost mid-transaction        -> 451 4.4.2

aiosmtplib opens each connection: source address bound to the egress IP,
greeting, EHLO with the IP's HELO name, STARTTLS per policy. The open
connection then becomes a `session.Session`, which runs the transactions
(pipelined when the server offers PIPELINING, which aiosmtplib cannot do).
A pooled connection found dead before the message went out is replaced by a
fresh one and the transaction tried again; once the message was sent, a lost
connection is a deferral (it may have arrived: at-least-once, never lost).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import weakref

import aiosmtplib

from mailpipe.contracts.config import RelayConfig, TLSMode

from ..classify import reply
from ..ports import Envelope, SMTPReply, TransactionResult
from .mx import MXResolver, NoSuchDomain, NullMX, Route, TemporaryDNSError
from .session import ConnectionLost, Session

log = logging.getLogger("mailpipe.relay.delivery")

WATCHDOG_SECONDS = 1.0  # command timeouts are enforced to within this
IDLE_SECONDS = 30.0  # drop pooled connections older than this; many MXes cut idle ones at ~60 s


class _NoTLS(Exception):
    pass


def _all(recipients: tuple[str, ...], r: SMTPReply) -> dict[str, SMTPReply]:
    return dict.fromkeys(recipients, r)


class SMTPTransport:
    def __init__(self, config: RelayConfig, resolver: MXResolver | None = None) -> None:
        self.mx = resolver or MXResolver(config)
        self._idle: dict[tuple[str, str, int], list[Session]] = {}
        self.connections_opened = 0
        self._quitting: set[asyncio.Task[None]] = set()
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._watchdog: asyncio.Task[None] | None = None
        self.reconfigure(config)

    def reconfigure(self, config: RelayConfig) -> None:
        self.config = config
        self.mx.reconfigure(config)

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
        except NullMX as exc:
            return TransactionResult(_all(rcpts, reply(556, f"5.1.10 {exc}")))
        except NoSuchDomain as exc:
            return TransactionResult(_all(rcpts, reply(550, f"5.1.2 {exc}")))
        except TemporaryDNSError as exc:
            return TransactionResult(_all(rcpts, reply(451, f"4.4.3 DNS lookup failed: {exc}")))

        last = reply(421, "4.4.1 no MX host accepted a connection")
        for route in routes:
            for fresh_only in (False, True):
                try:
                    conn, reused = await self._acquire(envelope, route, fresh_only)
                except _NoTLS:
                    last = reply(
                        451, f"4.7.5 STARTTLS required by policy, not offered by {route.name}"
                    )
                    break
                except aiosmtplib.SMTPResponseException as exc:  # e.g. 421 at greeting
                    last = reply(exc.code, exc.message)
                    break
                except (TimeoutError, OSError, aiosmtplib.SMTPException) as exc:
                    last = reply(421, f"4.4.1 {route.name}: {exc.__class__.__name__}: {exc}")
                    break
                try:
                    replies = await conn.transaction(envelope.sender, rcpts, envelope.message)
                except ConnectionLost as exc:
                    if reused and not exc.body_sent:
                        continue  # a stale pooled connection: try once more on a new one
                    return TransactionResult(
                        _all(rcpts, reply(451, f"4.4.2 {route.name}: {exc}")),
                        mx_host=route.name,
                        connected=True,
                    )
                self._release(envelope, route, conn)
                return TransactionResult(replies, mx_host=route.name, connected=True)
        return TransactionResult(_all(rcpts, last))

    async def _acquire(self, env: Envelope, route: Route, fresh_only: bool) -> tuple[Session, bool]:
        key = (env.egress_address, route.host, route.port)
        idle = self._idle.get(key, [])
        now = time.monotonic()
        while idle and not fresh_only:
            conn = idle.pop()
            if conn.is_open and now - conn.last_used < IDLE_SECONDS:
                return conn, True
            conn.close()
        return await self._open(env, route), False

    async def _open(self, env: Envelope, route: Route) -> Session:
        tls = self.config.tls
        smtp = aiosmtplib.SMTP(
            hostname=route.host,
            port=route.port,
            local_hostname=env.helo,
            source_address=(env.egress_address, 0),
            timeout=self.config.command_timeout_seconds,
            start_tls=False,  # decided below, per policy
            validate_certs=tls.verify,
        )
        await smtp.connect(timeout=self.config.connect_timeout_seconds)
        self.connections_opened += 1
        try:
            await smtp.ehlo()
            if tls.mode is not TLSMode.DISABLED and smtp.supports_extension("starttls"):
                context = ssl.create_default_context()
                if not tls.verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                await smtp.starttls(tls_context=context)
                # RFC 3207: forget what was offered in clear and ask again. (aiosmtplib
                # would do it lazily before its next command; the session won't.)
                await smtp.ehlo()
            elif tls.mode is TLSMode.REQUIRED:
                raise _NoTLS()
            transport = smtp.transport
            if not isinstance(transport, asyncio.Transport) or transport.is_closing():
                raise aiosmtplib.SMTPServerDisconnected("connection closed during EHLO")
        except BaseException:
            smtp.close()
            raise
        session = Session(
            transport,
            dict(smtp.esmtp_extensions),
            timeout=self.config.command_timeout_seconds,
            host=route.name,
        )
        self._sessions.add(session)
        return session

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
        key = (env.egress_address, route.host, route.port)
        self._idle.setdefault(key, []).append(conn)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        await asyncio.gather(*(c.quit() for c in conns), *self._quitting)
