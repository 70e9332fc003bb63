"""Receivers that fail the way real MTAs and networks do, for the fault suite.

The devstack's recording receiver answers as told but always answers; these
stop half-way: one drops the connection in the middle of DATA (the message
never arrived: the sender must retry, and no duplicate is possible), the
other takes the whole message and then never answers the final dot (RFC 1047:
it may have queued the message; the sender times out, defers and retries, so
this case can legitimately cause one duplicate per silent transaction).
Each fault applies to the first `n` transactions, then the receiver is healthy.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailpipe.devstack.smtp_receiver import (
    ReceiverHandler,
    SMTPReceiver,
    _Controller,
    _RecordingSMTP,
)

SILENCE_LIMIT_SECONDS = 120.0  # a silent receiver gives up long after any sender's timeout
SILENCE_POLL_SECONDS = 0.05


@dataclass
class Faults:
    drop_in_data: int = 0  # DATA phases cut after the first line of the message
    silent_after_data: int = 0  # final dots never answered (message recorded)
    dropped: int = 0  # how many were cut so far
    silenced: int = 0  # how many went unanswered so far
    silenced_recipients: int = 0  # recipients of those (each may arrive twice)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()

    def take_drop(self) -> bool:
        with self.lock:
            if self.dropped < self.drop_in_data:
                self.dropped += 1
                return True
            return False

    def take_silence(self) -> bool:
        with self.lock:
            if self.silenced < self.silent_after_data:
                self.silenced += 1
                return True
            return False


class _FaultyHandler(ReceiverHandler):
    def __init__(self, faults: Faults) -> None:
        super().__init__()
        self.faults = faults

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)  # recorded: it arrived
        if self.faults.take_silence():
            with self.faults.lock:
                self.faults.silenced_recipients += len(envelope.rcpt_tos)
            # Say nothing until the sender gives up and closes the connection.
            deadline = time.monotonic() + SILENCE_LIMIT_SECONDS
            while time.monotonic() < deadline:
                transport = server.transport
                if transport is None or transport.is_closing():
                    break
                await asyncio.sleep(SILENCE_POLL_SECONDS)
        return reply


class _FaultySMTP(_RecordingSMTP):
    async def smtp_DATA(self, arg: str) -> None:
        handler = self._receiver
        assert isinstance(handler, _FaultyHandler)
        ready = self.envelope is not None and self.envelope.rcpt_tos and not arg
        if ready and handler.faults.take_drop():
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readuntil(b"\r\n")  # the message starts arriving...
            if self.transport is not None:
                self.transport.abort()  # ...and the connection is gone (RST)
            return
        await super().smtp_DATA(arg)


class _FaultyController(_Controller):
    def factory(self) -> SMTP:
        assert isinstance(self.handler, _FaultyHandler)
        return _FaultySMTP(self.handler, **self.SMTP_kwargs)


class FaultyReceiver(SMTPReceiver):
    """The recording receiver with `faults` (see `Faults`)."""

    def __init__(self, host: str, port: int, faults: Faults) -> None:
        super().__init__(host, port)
        self.faults = faults
        self.handler = _FaultyHandler(faults)
        plain = self._controller
        plain.loop.close()  # aiosmtpd made it in the constructor; this controller replaces it
        self._controller = _FaultyController(
            self.handler,
            hostname=plain.hostname,
            port=plain.port,
            ready_timeout=plain.ready_timeout,
            **plain.SMTP_kwargs,
        )
