"""A recording SMTP receiver on aiosmtpd that answers as it is told.

Stands in for recipient MX hosts in tests, the demo and benchmarks: it listens
on a given 127.0.0.x address, records what a real MX would see (peer address,
EHLO name, envelope, data, time) and answers per recipient (250, 451, 550, any
code) or per connection (421 at greeting, slow replies). A recipient may have a
sequence of answers, consumed one per attempt, so "451 first, then 250" is a
one-liner. It runs in aiosmtpd's own thread, so synchronous tests can use it;
accessors are guarded by a lock.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

OK = "250 2.0.0 OK"


@dataclass(frozen=True)
class Received:
    """One accepted message as the receiver saw it."""

    peer: str
    helo: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    time: float
    tls: bool = False  # the message came over a STARTTLS-protected session


@dataclass
class Policy:
    """How the receiver answers. Mutable between tests or phases of one test."""

    # lower-cased recipient -> replies, consumed in order; the last one repeats
    recipients: dict[str, list[str]] = field(default_factory=dict)
    greeting_421: bool = False
    # Seconds before the banner: a slow MX (or a busy one, greeting late on
    # purpose), so connection set-up takes time before the first transaction.
    greeting_delay_seconds: float = 0.0
    reply_delay_seconds: float = 0.0
    data_reply: str = OK
    # Advertise RFC 2920 PIPELINING, as real MX hosts do (aiosmtpd reads
    # commands in order from its stream, so pipelined groups just work).
    pipelining: bool = True


@dataclass(frozen=True)
class SessionEnd:
    """One connection as it ended: who, whether the client said QUIT first, when."""

    peer: str
    quit: bool
    time: float


class _RecordingSMTP(SMTP):
    """aiosmtpd's server, plus a 421-at-greeting option (a busy or blocking MX),
    a late greeting (a slow one), and how each connection ended (QUIT or not)."""

    def __init__(self, handler: ReceiverHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._receiver = handler
        self.quit_seen = False

    async def smtp_QUIT(self, arg: str) -> None:
        self.quit_seen = True
        await super().smtp_QUIT(arg)

    def connection_lost(self, error: Exception | None) -> None:
        peer = self.session.peer if self.session is not None else None
        self._receiver.session_ended(str(peer[0]) if peer else "", self.quit_seen)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        self._receiver.count_connection(self.session)
        try:
            await self._serve()
        finally:
            self._receiver.count_closed()

    async def _serve(self) -> None:
        if self._receiver.policy.greeting_delay_seconds:
            await asyncio.sleep(self._receiver.policy.greeting_delay_seconds)
        if self._receiver.policy.greeting_421:
            await self.push("421 4.7.0 too many connections, try later")
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()


class ReceiverHandler:
    """aiosmtpd handler: policy per recipient, recording per message."""

    def __init__(self) -> None:
        self.policy = Policy()
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.rcpt_replies: list[tuple[str, str]] = []  # (recipient, reply) in order
        self.connections: Counter[str] = Counter()  # peer ip -> connections
        # Connections open now, and the most ever open at once: what a receiver's
        # concurrent-connection limit counts, idle pooled ones included.
        self.open_now = 0
        self.open_peak = 0
        # peer ip -> recipients it tried (RCPT answered, whatever the reply): what
        # a warming IP's daily cap counts, delivered, bounced and deferred alike
        self.rcpt_tries: Counter[str] = Counter()
        # (sender, arrival time) of every MAIL FROM, accepted or not: what a
        # receiver's rate limit counts (Gmail, Yahoo count what arrives).
        self.mail_froms: list[tuple[str, float]] = []
        self._attempts: Counter[str] = Counter()
        self.ends: list[SessionEnd] = []  # every connection that ended, in order

    def session_ended(self, peer: str, quit: bool) -> None:
        with self.lock:
            self.ends.append(SessionEnd(peer, quit, time.time()))

    def count_connection(self, session: Session | None) -> None:
        with self.lock:
            self.open_now += 1
            self.open_peak = max(self.open_peak, self.open_now)
            if session is not None and session.peer:
                self.connections[str(session.peer[0])] += 1

    def count_closed(self) -> None:
        with self.lock:
            self.open_now -= 1

    def _reply_for(self, address: str) -> str:
        key = address.lower()
        with self.lock:
            replies = self.policy.recipients.get(key)
            n = self._attempts[key]
            self._attempts[key] += 1
        if not replies:
            return OK
        return replies[min(n, len(replies) - 1)]

    async def _delay(self) -> None:
        if self.policy.reply_delay_seconds:
            await asyncio.sleep(self.policy.reply_delay_seconds)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        return ehlo_responses(session, hostname, responses, pipelining=self.policy.pipelining)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        with self.lock:
            self.mail_froms.append((address, time.time()))
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        await self._delay()
        reply = self._reply_for(address)
        with self.lock:
            self.rcpt_replies.append((address, reply))
            if session.peer:
                self.rcpt_tries[str(session.peer[0])] += 1
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self._delay()
        reply = self.policy.data_reply
        if reply.startswith("2"):
            content = envelope.original_content or b""
            peer = str(session.peer[0]) if session.peer else ""
            with self.lock:
                self.messages.append(
                    Received(
                        peer=peer,
                        helo=session.host_name or "",
                        mail_from=envelope.mail_from or "",
                        rcpt_tos=tuple(envelope.rcpt_tos),
                        data=content,
                        time=time.time(),
                        tls=session.ssl is not None,
                    )
                )
        return reply


class _Controller(Controller):
    def factory(self) -> SMTP:
        assert isinstance(self.handler, ReceiverHandler)
        return _RecordingSMTP(self.handler, **self.SMTP_kwargs)


class SMTPReceiver:
    """A recording receiver listening on `host:port` until `stop()`.

    >>> rx = SMTPReceiver("127.0.0.10", 2525).start()
    >>> rx.answer("bob@example.test", "550 5.1.1 no such user")
    """

    def __init__(self, host: str, port: int, tls_context: ssl.SSLContext | None = None) -> None:
        """`tls_context` (a server context) makes the receiver offer STARTTLS."""
        self.host = host
        self.port = port
        self.handler = ReceiverHandler()
        self._controller = _Controller(
            self.handler,
            hostname=host,
            port=port,
            ready_timeout=10.0,
            data_size_limit=50 * 1024 * 1024,  # bigger than any test message
            enable_SMTPUTF8=True,
            ident="mailpipe-test-receiver",
            tls_context=tls_context,
        )

    def start(self) -> SMTPReceiver:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SMTPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def policy(self) -> Policy:
        return self.handler.policy

    def answer(self, recipient: str, *replies: str) -> None:
        """Answer RCPT for `recipient` with these replies, one per attempt; the last repeats."""
        with self.handler.lock:
            self.handler.policy.recipients[recipient.lower()] = list(replies)

    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def recipients(self) -> list[str]:
        """Every accepted recipient of every accepted message, duplicates kept."""
        return [r for m in self.messages() for r in m.rcpt_tos]

    def peers(self) -> Counter[str]:
        """Accepted recipients per peer (egress) address."""
        counts: Counter[str] = Counter()
        for m in self.messages():
            counts[m.peer] += len(m.rcpt_tos)
        return counts

    def mail_times(self) -> list[float]:
        """Arrival time of every MAIL FROM so far, in order."""
        with self.handler.lock:
            return [t for _, t in self.handler.mail_froms]

    def connections(self) -> Counter[str]:
        with self.handler.lock:
            return Counter(self.handler.connections)

    def peak_connections(self) -> int:
        """The most connections ever open at once (a pooled idle one counts)."""
        with self.handler.lock:
            return self.handler.open_peak

    def session_ends(self) -> list[SessionEnd]:
        """Every connection that ended so far, with whether the client said QUIT."""
        with self.handler.lock:
            return list(self.handler.ends)

    def reset(self, recipients: Iterable[str] = ()) -> None:
        with self.handler.lock:
            self.handler.messages.clear()
            self.handler.rcpt_replies.clear()
            self.handler.connections.clear()
            self.handler.open_peak = self.handler.open_now
            self.handler.mail_froms.clear()
            self.handler.ends.clear()
            for r in recipients:
                self.handler.policy.recipients.pop(r.lower(), None)


def ehlo_responses(
    session: Session, hostname: str, responses: list[str], *, pipelining: bool = True
) -> list[str]:
    """aiosmtpd's EHLO answer, advertising PIPELINING as real MX hosts do."""
    session.host_name = hostname
    if pipelining:
        responses.insert(len(responses) - 1, "250-PIPELINING")
    return responses
