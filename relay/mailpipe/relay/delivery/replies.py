"""SMTP reply parsing (RFC 5321 4.2), pure: bytes in, complete replies out.

With PIPELINING (RFC 2920) several replies arrive back to back, possibly in
one TCP segment or split anywhere, so the parser keeps whatever is left over
and hands out every reply that is complete, in order. Multi-line replies
("250-first", "250 last") become one reply whose text joins the lines with
"\\n". A line that is not "ddd", "ddd text" or "ddd-text" is a protocol
violation by the peer.
"""

from __future__ import annotations

from mailpipe.contracts.errors import TemporaryError

from ..classify import reply
from ..ports import SMTPReply

MAX_REPLY_LINE = 4096  # RFC 5321 says 512; be lenient, but bounded
MAX_REPLY_LINES = 200


class ReplyError(TemporaryError):
    """The peer sent something that is not an SMTP reply."""


class ReplyParser:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[str] = []

    def feed(self, data: bytes) -> list[SMTPReply]:
        """Add received bytes; return the replies they complete (maybe none)."""
        self._buffer += data
        out: list[SMTPReply] = []
        start = 0
        buf = self._buffer
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end]).rstrip(b"\r")
            start = end + 1
            done = self._line(line)
            if done is not None:
                out.append(done)
        del buf[:start]
        if len(buf) > MAX_REPLY_LINE:
            raise ReplyError(f"reply line longer than {MAX_REPLY_LINE} bytes")
        return out

    def _line(self, line: bytes) -> SMTPReply | None:
        code = line[:3]
        sep = line[3:4]
        if len(line) > MAX_REPLY_LINE or not code.isdigit() or sep not in (b"", b" ", b"-"):
            raise ReplyError(f"malformed reply line {line[:80]!r}")
        self._lines.append(line[4:].decode("utf-8", "replace").strip())
        if len(self._lines) > MAX_REPLY_LINES:
            raise ReplyError(f"reply of more than {MAX_REPLY_LINES} lines")
        if sep == b"-":
            return None
        text = "\n".join(self._lines)
        self._lines = []
        return reply(int(code), text)
