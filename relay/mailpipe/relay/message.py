"""RFC 5322 bytes for a delivery record: MIME, list headers, DKIM signature.

The operator has already rendered templates and merge fields, so content is
final here; this module only assembles it with the standard library's email
package (SMTP policy: CRLF line ends, folded headers) and signs it with dkimpy.
Records that arrive `raw` (submission endpoint) pass through, signed if the
pool signs.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import dkim

from .config import DKIMSettings
from .wire import DeliveryRecord


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


def _structured(record: DeliveryRecord, now: float) -> bytes:
    content = record.content
    assert content is not None  # DeliveryRecord guarantees content xor raw
    msg = EmailMessage(policy=SMTP)
    try:
        msg["From"] = email.utils.formataddr((content.from_name or "", record.sender))
        msg["To"] = ", ".join(r.address for r in record.recipients)
        msg["Subject"] = content.subject
        msg["Date"] = email.utils.formatdate(now, localtime=False)
        msg["Message-ID"] = f"<{record.id}@{record.sender.rpartition('@')[2]}>"
        if content.reply_to:
            msg["Reply-To"] = content.reply_to
        unsub = record.list_unsubscribe
        if unsub is not None:
            targets = [
                f"<{t}>"
                for t in (unsub.url, f"mailto:{unsub.mailto}" if unsub.mailto else None)
                if t
            ]
            msg["List-Unsubscribe"] = ", ".join(targets)
            if unsub.one_click:
                msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        for name, value in content.headers:
            msg[name] = value
        if content.text is not None:
            msg.set_content(content.text)
            if content.html is not None:
                msg.add_alternative(content.html, subtype="html")
        elif content.html is not None:
            msg.set_content(content.html, subtype="html")
        return msg.as_bytes()
    except (ValueError, TypeError) as exc:
        raise MessageError(f"cannot build message {record.id}: {exc}") from exc
