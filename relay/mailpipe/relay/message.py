"""RFC 5322 bytes for a delivery record: MIME, list headers, DKIM signature.

The operator has already rendered templates and merge fields, so content is
final here; this module only assembles it with the standard library's email
package (SMTP policy: CRLF line ends, folded headers) and signs it with dkimpy.
Records that arrive `raw` (submission endpoint) pass through, signed if the
pool signs.
"""

from __future__ import annotations

import email.utils
import quopri
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from pathlib import Path

import dkim

from .config import DKIMSettings
from .wire import DeliveryRecord

_WIRE = compat32.clone(linesep="\r\n")  # SMTP wants CRLF line ends


class MessageError(ValueError):
    """A record whose message cannot be built (goes to the DLQ with this reason)."""


class Signer:
    """DKIM signer with its key read once (keys come from a mounted Secret)."""

    def __init__(self, settings: DKIMSettings) -> None:
        self.settings = settings
        self._key = Path(settings.private_key_path).read_bytes()
        self._headers = [h.encode() for h in settings.headers]

    def sign(self, message: bytes) -> bytes:
        present = {
            line.split(b":", 1)[0].strip().lower()
            for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            if b":" in line and not line[:1].isspace()
        }
        include = [h for h in self._headers if h.lower() in present]
        signature: bytes = dkim.sign(
            message,
            self.settings.selector.encode(),
            self.settings.domain.encode(),
            self._key,
            include_headers=include,
        )
        return signature + message


def build_message(record: DeliveryRecord, now: float, signer: Signer | None = None) -> bytes:
    """The bytes to send for `record` (one message for all its recipients)."""
    if record.raw is not None:
        data = record.raw.encode("utf-8", "surrogateescape").replace(b"\r\n", b"\n")
        data = data.replace(b"\n", b"\r\n")
    else:
        data = _structured(record, now)
    return signer.sign(data) if signer is not None else data


def _header(value: str) -> str:
    """ASCII stays as it is; anything else is RFC 2047-encoded (UTF-8)."""
    return value if value.isascii() else Header(value, "utf-8").encode()


def _body(text: str, subtype: str) -> MIMEText:
    # 7bit bodies when they are ASCII with short lines, else quoted-printable.
    if text.isascii() and all(len(line) <= 998 for line in text.splitlines()):
        return MIMEText(text, subtype, "us-ascii")
    part = MIMEText("", subtype, "utf-8")
    part.replace_header("Content-Transfer-Encoding", "quoted-printable")
    part.set_payload(quopri.encodestring(text.encode("utf-8")).decode("ascii"))
    return part


def _structured(record: DeliveryRecord, now: float) -> bytes:
    """MIME via the stdlib's compat32 API: the modern EmailMessage API parses
    every header it is given, which profiling showed to be most of the relay's
    CPU per message; compat32 with explicit RFC 2047 encoding is the fast path."""
    content = record.content
    assert content is not None  # DeliveryRecord guarantees content xor raw
    try:
        if content.text is not None and content.html is not None:
            msg: Message = MIMEMultipart("alternative")
            msg.attach(_body(content.text, "plain"))
            msg.attach(_body(content.html, "html"))
        elif content.text is not None:
            msg = _body(content.text, "plain")
        else:
            msg = _body(content.html or "", "html")
        from_name = content.from_name or ""
        if from_name and not from_name.isascii():
            from_name = Header(from_name, "utf-8").encode()
        msg["From"] = email.utils.formataddr((from_name, record.sender))
        msg["To"] = ", ".join(r.address for r in record.recipients)
        msg["Subject"] = _header(content.subject)
        msg["Date"] = email.utils.formatdate(now, localtime=False)
        msg["Message-ID"] = f"<{record.id}@{record.sender.rpartition('@')[2]}>"
        if content.reply_to:
            msg["Reply-To"] = content.reply_to
        unsub = record.list_unsubscribe
        if unsub is not None:
            targets = [unsub.url, f"mailto:{unsub.mailto}" if unsub.mailto else None]
            msg["List-Unsubscribe"] = ", ".join(f"<{t}>" for t in targets if t)
            if unsub.one_click:
                msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        for name, value in content.headers:
            msg[name] = _header(value)
        return msg.as_bytes(policy=_WIRE)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise MessageError(f"cannot build message {record.id}: {exc}") from exc
