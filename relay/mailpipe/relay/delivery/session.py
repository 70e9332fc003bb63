"""Mail transactions on an open SMTP connection, pipelined when the server offers it.

aiosmtplib opens the connection (source address, greeting, EHLO, STARTTLS),
then the transport is handed to `SessionProtocol` for the transactions:
aiosmtplib waits for each reply before the next command and drops replies
that arrive before it asks for them, so it cannot do RFC 2920 PIPELINING.
With PIPELINING a transaction is two writes and two waits whatever the
number of recipients:

    MAIL FROM:<s> / RCPT TO:<a> ... / DATA      -> one reply each, in order
    <message, dot-stuffed> "."                  -> the final reply

Without it the same commands go one at a time. Either way every recipient
gets the reply that decides it: MAIL's refusal, its own RCPT refusal, DATA's
refusal or the final reply. A connection lost before the message was sent
is `ConnectionLost(body_sent=False)` (safe to retry on another connection);
after, the message may have been delivered (`body_sent=True`).

The record's rate token is taken here, on the greeted connection, just
before MAIL FROM is written (pipelined or not), so what arrives at the
receiver keeps the destination's rate (`tokens`, ARCHITECTURE.md, "Limits hold pool-wide").

Every reply waited for has its own RFC 5321 4.5.3.2 timeout, named by its
stage (`SMTPTimeouts`: MAIL, each RCPT, DATA initiation, each block of the
message written, DATA termination), also when pipelined; a stage that times
out loses the connection with a text naming it ("no reply to RCPT within
300 s (rcpt timeout)"), which the deferral event carries.

Over 300 lines because the protocol (replies, deadlines, flow control) and
the transaction that waits on it are one mechanism: split, each half would
need the other's internals.
"""

from __future__ import annotations

import asyncio
from collections import deque

from mailpipe.contracts.config import SMTPTimeouts
from mailpipe.contracts.errors import TemporaryError

from ..addresses import smtp_address
from ..classify import reply
from ..ports import RateGate, SMTPReply, Stage
from .replies import ReplyError, ReplyParser

QUIT_TIMEOUT_SECONDS = 5.0
# After QUIT, how long the connection may take to finish closing (a TLS one first
# exchanges close_notify) before it is aborted, so no socket outlives the session.
CLOSE_WAIT_SECONDS = 2.0


class ConnectionLost(TemporaryError):
    """The connection broke, timed out or spoke garbage mid-transaction."""

    def __init__(self, message: str, *, body_sent: bool = False) -> None:
        super().__init__(message)
        self.body_sent = body_sent


class SessionProtocol(asyncio.Protocol):
    """Collects replies in arrival order; writers wait for as many as they sent commands."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._parser = ReplyParser()
        self._replies: deque[SMTPReply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False
        self.error: ConnectionLost | None = None
        self.deadline: float | None = None  # loop time by which the pending exchange must end
        # While a message is written: each block the transport takes re-arms the
        # deadline by this much (RFC 5321 4.5.3.2.5 times each block, not the whole).
        self.block_seconds: float | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()  # set by connection_lost

    # -- asyncio.Protocol callbacks ---------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            self._replies.extend(self._parser.feed(data))
        except ReplyError as exc:
            self._fail(ConnectionLost(f"protocol error: {exc}"))
            self.transport.close()
            return
        self._wake()

    def eof_received(self) -> bool:
        self._fail(ConnectionLost("server closed the connection"))
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionLost(f"connection lost: {exc}" if exc else "connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self.block_seconds is not None and self.deadline is not None:
            self.deadline = self._loop.time() + self.block_seconds
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- for Session --------------------------------------------------------

    def time_out(self, what: str) -> None:
        self._fail(ConnectionLost(what))

    def _fail(self, error: ConnectionLost) -> None:
        """The connection is done for: wake whoever waits for replies or a drain."""
        if self.error is None:
            self.error = error
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.transport.write(data)
        if self._paused:  # large messages: respect the transport's flow control
            self._drain = self._loop.create_future()
            await self._drain
            if self.error is not None:
                raise self.error

    async def read(self, count: int) -> list[SMTPReply]:
        """The next `count` replies, in order (the caller bounds the wait with `time_out`)."""
        while len(self._replies) < count:
            if self.error is not None:
                raise self.error
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return [self._replies.popleft() for _ in range(count)]


def dot_stuff(message: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency plus the terminating dot; `message` has CRLF line ends."""
    if message.startswith(b"."):
        message = b"." + message
    if b"\n." in message:
        message = message.replace(b"\n.", b"\n..")
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


class Session:
    """One open SMTP connection after EHLO (and STARTTLS), reused across transactions."""

    def __init__(
        self,
        transport: asyncio.Transport,
        extensions: dict[str, str],
        *,
        timeouts: SMTPTimeouts,
        host: str,
    ) -> None:
        self.protocol = SessionProtocol(transport)
        transport.set_protocol(self.protocol)
        self._loop = asyncio.get_running_loop()
        self.host = host
        self.timeouts = timeouts
        self._waiting_for = ""  # what the pending deadline is for, named with its stage
        self.pipelining = "pipelining" in extensions
        self.eight_bit = "8bitmime" in extensions
        self.smtputf8 = "smtputf8" in extensions
        size = extensions.get("size", "").strip()
        self.size_limit = int(size) if size.isdigit() and int(size) > 0 else None
        self.sent = 0

    @property
    def is_open(self) -> bool:
        return self.protocol.error is None and not self.protocol.transport.is_closing()

    def check_deadline(self, now: float) -> None:
        """Called by the transport's watchdog about once a second: a timer per
        exchange (thousands a second, each cancelled) costs more than the rest
        of the exchange, so timeouts are enforced by polling deadlines instead."""
        deadline = self.protocol.deadline
        if deadline is not None and now > deadline:
            self.protocol.time_out(self._waiting_for)

    def _expect(self, what: str, stage: str, seconds: float) -> None:
        """Arm the deadline for the next wait, named for the timeout's message."""
        self.protocol.deadline = self._loop.time() + seconds
        self._waiting_for = f"{what} within {seconds:g} s ({stage} timeout)"

    async def _exchange(
        self, data: bytes, stages: list[tuple[str, str, float]], *, body_sent: bool
    ) -> list[SMTPReply]:
        """Write `data`, then read one reply per (what, stage, timeout) in `stages`,
        each within its own stage's timeout (RFC 5321 4.5.3.2)."""
        t = self.timeouts
        try:
            if body_sent:  # 4.5.3.2.5: each block of the message within the data-block timeout
                self._expect("message not taken", "data block", t.data_block_seconds)
                self.protocol.block_seconds = t.data_block_seconds
            else:
                self._expect(*stages[0])
            try:
                await self.protocol.write(data)
            finally:
                self.protocol.block_seconds = None
            out = []
            for stage in stages:
                self._expect(*stage)
                out.extend(await self.protocol.read(1))
            return out
        except ConnectionLost as exc:
            self.close()
            raise ConnectionLost(f"{self.host}: {exc}", body_sent=body_sent) from None
        finally:
            self.protocol.deadline = None

    async def transaction(
        self,
        sender: str,
        recipients: tuple[str, ...],
        message: bytes,
        gate: RateGate | None = None,
    ) -> tuple[dict[str, SMTPReply], dict[str, Stage]]:
        """Send `message` to `recipients`; every recipient's deciding reply and its stage.
        `gate` (the record's rate token) is taken right before MAIL FROM is written."""
        self.sent += 1
        # Domains go as A-labels, so only a non-ASCII local part needs SMTPUTF8
        # (RFC 6531 3.2): u@bücher.test is RCPT TO:<u@xn--bcher-kva.test>.
        wire_sender = smtp_address(sender)
        wire_rcpts = [smtp_address(r) for r in recipients]
        needs_utf8 = not (wire_sender.isascii() and all(r.isascii() for r in wire_rcpts))
        refusal = self._refuse(message, needs_utf8)
        if refusal is not None:
            return dict.fromkeys(recipients, refusal), dict.fromkeys(recipients, Stage.LOCAL)
        params = ""
        if not message.isascii() and self.eight_bit:
            params += " BODY=8BITMIME"
        if needs_utf8:
            params += " SMTPUTF8"
        mail_cmd = f"MAIL FROM:<{wire_sender}>{params}\r\n".encode()
        rcpt_cmds = [f"RCPT TO:<{r}>\r\n".encode() for r in wire_rcpts]
        t = self.timeouts
        mail = ("no reply to MAIL", "mail", t.mail_seconds)
        rcpt = ("no reply to RCPT", "rcpt", t.rcpt_seconds)
        data = ("no reply to DATA", "data initiation", t.data_init_seconds)
        if gate is not None:
            await self._take_token(gate)

        data_reply: SMTPReply | None
        if self.pipelining:
            replies = await self._exchange(
                b"".join([mail_cmd, *rcpt_cmds, b"DATA\r\n"]),
                [mail, *[rcpt] * len(rcpt_cmds), data],
                body_sent=False,
            )
            mail_reply, rcpt_replies, data_reply = replies[0], replies[1:-1], replies[-1]
        else:
            (mail_reply,) = await self._exchange(mail_cmd, [mail], body_sent=False)
            rcpt_replies = []
            if _ok(mail_reply):
                for cmd in rcpt_cmds:
                    rcpt_replies.extend(await self._exchange(cmd, [rcpt], body_sent=False))
            accepted_any = any(_ok(r) for r in rcpt_replies)
            data_reply = (
                (await self._exchange(b"DATA\r\n", [data], body_sent=False))[0]
                if accepted_any
                else None
            )

        if not _ok(mail_reply):
            result = dict.fromkeys(recipients, mail_reply)
            stages = dict.fromkeys(recipients, Stage.MAIL)
            accepted: list[str] = []
        else:
            result = dict(zip(recipients, rcpt_replies, strict=True))
            stages = dict.fromkeys(recipients, Stage.RCPT)
            accepted = [r for r, rep in result.items() if _ok(rep)]

        end = ("no reply after the message", "data termination", t.data_termination_seconds)
        if data_reply is not None and data_reply.code == 354:
            if accepted:
                (final,) = await self._exchange(dot_stuff(message), [end], body_sent=True)
                result.update(dict.fromkeys(accepted, final))
                stages.update(dict.fromkeys(accepted, Stage.MESSAGE))
            else:
                # RFC 2920 3.1: DATA accepted with no valid recipient: end it empty.
                await self._exchange(b".\r\n", [end], body_sent=False)
                await self._rset()
        else:
            if accepted:  # DATA refused: it decides the recipients RCPT accepted
                assert data_reply is not None
                result.update(dict.fromkeys(accepted, data_reply))
                stages.update(dict.fromkeys(accepted, Stage.DATA))
            await self._rset()
        return result, stages

    async def _take_token(self, gate: RateGate) -> None:
        """The rate token, on this greeted connection, as late as it can be taken:
        receivers count the MAIL FROMs that arrive (ARCHITECTURE.md, "Limits hold pool-wide"). A
        connection that closed while it waited gives the token back, nothing written."""
        await gate.before_mail()
        if not self.is_open:
            gate.unused()
            raise ConnectionLost(f"{self.host}: connection closed while waiting for the rate token")

    def _refuse(self, message: bytes, needs_utf8: bool) -> SMTPReply | None:
        """Replies we can give without asking: what the server said it cannot take."""
        if self.size_limit is not None and len(message) > self.size_limit:
            return reply(
                552, f"5.3.4 message of {len(message)} bytes over {self.host}'s SIZE limit"
            )
        if needs_utf8 and not self.smtputf8:
            return reply(553, f"5.6.7 {self.host} does not offer SMTPUTF8 for these addresses")
        return None

    async def _rset(self) -> None:
        # RFC 5321 names no RSET timeout; the MAIL one is the nearest command's.
        rset = ("no reply to RSET", "rset", self.timeouts.mail_seconds)
        await self._exchange(b"RSET\r\n", [rset], body_sent=False)

    async def quit(self) -> None:
        """Polite goodbye; a peer that does not answer is simply closed."""
        if self.is_open:
            self._expect("no reply to QUIT", "quit", QUIT_TIMEOUT_SECONDS)
            try:
                await self.protocol.write(b"QUIT\r\n")
                await self.protocol.read(1)
            except ConnectionLost:
                pass
            finally:
                self.protocol.deadline = None
        self.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.protocol.closed), CLOSE_WAIT_SECONDS)
        except TimeoutError:
            self.protocol.transport.abort()

    def close(self) -> None:
        if not self.protocol.transport.is_closing():
            self.protocol.transport.close()


def _ok(r: SMTPReply) -> bool:
    return 200 <= r.code < 300
