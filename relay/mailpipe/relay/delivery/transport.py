"""The SMTP transport: aiosmtplib connections, reused per (egress IP, MX host).

Implements `ports.Transport`. Every failure becomes an SMTP reply for every
recipient it touched, here and only here (third-party exceptions are mapped
once, at this boundary), so the engine's classifier decides all dispositions:

    null MX              -> 556 5.1.10      domain without MX or address -> 550 5.1.2
    DNS timeout/failure  -> 451 4.4.3       every MX refused or timed out  -> 421 4.4.1
    TLS required, absent -> 451 4.7.5 (no backoff: our policy, not theirs)
    connection lost mid-transaction        -> 451 4.4.2

Connections bind the egress IP as source address and greet with its HELO
name. aiosmtplib speaks one command at a time (it has no PIPELINING support),
so throughput comes from parallel lanes and connection reuse instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib

from ..classify import reply
from ..config import RelayConfig, TLSMode
from ..ports import Envelope, SMTPReply, TransactionResult
from .mx import MXResolver, NoSuchDomain, NullMX, Route, TemporaryDNSError

log = logging.getLogger("mailpipe.relay.delivery")

IDLE_SECONDS = 30.0  # drop pooled connections older than this; many MXes cut idle ones at ~60 s


class _NoTLS(Exception):
    pass


@dataclass
class _Conn:
    smtp: aiosmtplib.SMTP
    route: Route
    sent: int = 0
    last_used: float = field(default_factory=time.monotonic)


def _all(recipients: tuple[str, ...], r: SMTPReply) -> dict[str, SMTPReply]:
    return dict.fromkeys(recipients, r)


class SMTPTransport:
    def __init__(self, config: RelayConfig, resolver: MXResolver | None = None) -> None:
        self.mx = resolver or MXResolver(config)
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self.connections_opened = 0
        self.reconfigure(config)

    def reconfigure(self, config: RelayConfig) -> None:
        self.config = config
        self.mx.reconfigure(config)

    async def deliver(self, envelope: Envelope) -> TransactionResult:
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
                    replies = await self._transaction(conn, envelope)
                except (
                    aiosmtplib.SMTPServerDisconnected,
                    aiosmtplib.SMTPTimeoutError,
                    OSError,
                ) as exc:
                    conn.smtp.close()
                    if reused:
                        continue  # a stale pooled connection: try once more on a new one
                    return TransactionResult(
                        _all(rcpts, reply(451, f"4.4.2 connection lost: {exc}")),
                        mx_host=route.name,
                        connected=True,
                    )
                self._release(envelope, conn)
                return TransactionResult(replies, mx_host=route.name, connected=True)
        return TransactionResult(_all(rcpts, last))

    async def _acquire(self, env: Envelope, route: Route, fresh_only: bool) -> tuple[_Conn, bool]:
        key = (env.egress_address, route.host, route.port)
        idle = self._idle.get(key, [])
        now = time.monotonic()
        while idle and not fresh_only:
            conn = idle.pop()
            if conn.smtp.is_connected and now - conn.last_used < IDLE_SECONDS:
                return conn, True
            conn.smtp.close()
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
            elif tls.mode is TLSMode.REQUIRED:
                raise _NoTLS()
        except BaseException:
            smtp.close()
            raise
        return _Conn(smtp, route), False

    def _release(self, env: Envelope, conn: _Conn) -> None:
        conn.sent += 1
        conn.last_used = time.monotonic()
        limit = self.config.throttle_for(env.domain).messages_per_connection
        if conn.sent >= limit or not conn.smtp.is_connected:
            asyncio.get_running_loop().create_task(self._quit(conn))
            return
        self._idle.setdefault((env.egress_address, conn.route.host, conn.route.port), []).append(
            conn
        )

    async def _quit(self, conn: _Conn) -> None:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            await conn.smtp.quit(timeout=5)
        conn.smtp.close()

    async def _transaction(self, conn: _Conn, env: Envelope) -> dict[str, SMTPReply]:
        smtp = conn.smtp
        replies: dict[str, SMTPReply] = {}
        try:
            await smtp.mail(env.sender)
        except aiosmtplib.SMTPSenderRefused as exc:
            with contextlib.suppress(aiosmtplib.SMTPResponseException):
                await smtp.rset()
            return _all(env.recipients, reply(exc.code, exc.message))
        accepted: list[str] = []
        for rcpt in env.recipients:
            try:
                resp = await smtp.rcpt(rcpt)
            except aiosmtplib.SMTPRecipientRefused as exc:
                replies[rcpt] = reply(exc.code, exc.message)
            else:
                replies[rcpt] = reply(resp.code, resp.message)
                accepted.append(rcpt)
        if not accepted:
            with contextlib.suppress(aiosmtplib.SMTPResponseException):
                await smtp.rset()
            return replies
        try:
            resp = await smtp.data(env.message)
            final = reply(resp.code, resp.message)
        except aiosmtplib.SMTPDataError as exc:
            final = reply(exc.code, exc.message)
        for rcpt in accepted:
            replies[rcpt] = final
        return replies

    async def close(self) -> None:
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        await asyncio.gather(*(self._quit(c) for c in conns))
