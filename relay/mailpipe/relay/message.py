"""RFC 5322 bytes for a delivery record: MIME, list headers, DKIM signature.

The operator has already rendered templates and merge fields, so content is
final here; this module only assembles it and signs it with dkimpy. Records
that arrive `raw` (submission endpoint) pass through, signed if the pool signs.

Why not `email.message` + a generator: profiling the relay under load showed
the stdlib's object model and generator at 190-210 us per message (a third of
the relay's CPU; the modern EmailMessage API was 4x worse). The messages the
relay builds have one fixed shape, text and/or HTML, so they are composed
directly, with the standard library doing every encoding that has rules:
`email.header.Header` for RFC 2047 words and folding, `email.utils` for
addresses and dates, `binascii.b2a_qp` for quoted-printable bodies. Output
is checked against the stdlib parser in the unit tests.
"""

from __future__ import annotations

import binascii
import email.utils
import functools
import secrets
from email.header import Header
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from mailpipe.contracts.config import DKIMSettings
from mailpipe.contracts.errors import PermanentError
from mailpipe.contracts.wire import DeliveryRecord

CRLF = "\r\n"
MAX_HEADER_LINE = 78  # RFC 5322 2.1.1: SHOULD not exceed 78 characters
MAX_LINE = 998  # RFC 5322 2.1.1: MUST not exceed 998 characters


class MessageError(PermanentError, ValueError):
    """A record whose message cannot be built (goes to the DLQ with this reason)."""


# dkimpy computes RSA signatures with Python's pow(): 8 ms per message for a
# 2048-bit key, which would cap a signing relay near 120 messages a second.
# dkimpy keeps canonicalisation, hashing and the header; the RSA step of keys
# that a Signer loaded goes to OpenSSL (cryptography), 0.4 ms. PKCS#1 v1.5 is
# deterministic, so the bytes are the same (checked in the unit tests).
_OPENSSL_KEYS: dict[int, rsa.RSAPrivateKey] = {}  # modulus -> key
_PREHASHED: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}
# dkimpy's RSA step, looked up by name in its module when it signs.
_dkimpy_rsa_sign: Any = getattr(dkim, "RSASSA_PKCS1_v1_5_sign", None)


def openssl_rsa_sign(digest: Any, private_key: dict[str, int]) -> bytes:
    """dkimpy's RSASSA_PKCS1_v1_5_sign(hash, key) contract, computed by OpenSSL
    for keys a Signer registered (anything else: dkimpy's own code)."""
    key = _OPENSSL_KEYS.get(private_key["modulus"])
    algorithm = _PREHASHED.get(digest.name.lower())
    if key is None or algorithm is None:
        signature: bytes = _dkimpy_rsa_sign(digest, private_key)
        return signature
    return key.sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))


class Signer:
    """DKIM signer with its key read once (keys come from a mounted Secret)."""

    def __init__(self, settings: DKIMSettings) -> None:
        self.settings = settings
        self._key = Path(settings.private_key_path).read_bytes()
        self._headers = [h.encode() for h in settings.headers]
        loaded = serialization.load_pem_private_key(self._key, password=None)
        if isinstance(loaded, rsa.RSAPrivateKey) and _dkimpy_rsa_sign is not None:
            _OPENSSL_KEYS[loaded.private_numbers().public_numbers.n] = loaded
            dkim.RSASSA_PKCS1_v1_5_sign = openssl_rsa_sign

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
    """The bytes to send for `record` (one message for all its recipients), CRLF line ends."""
    if record.raw is not None:
        data = record.raw.encode("utf-8", "surrogateescape").replace(b"\r\n", b"\n")
        data = data.replace(b"\n", b"\r\n")
    else:
        try:
            data = _structured(record, now)
        except (ValueError, TypeError, UnicodeError) as exc:
            raise MessageError(f"cannot build message {record.id}: {exc}") from exc
    return signer.sign(data) if signer is not None else data


def header_line(name: str, value: str) -> str:
    """`Name: value` with CRLF: as it is when short and ASCII, otherwise RFC 2047
    encoded (UTF-8) and folded by `email.header.Header`."""
    if value.isascii() and len(name) + 2 + len(value) <= MAX_HEADER_LINE:
        return f"{name}: {value}{CRLF}"
    charset = "us-ascii" if value.isascii() else "utf-8"
    folded = Header(value, charset, header_name=name).encode(linesep=CRLF)
    if any(len(line) > MAX_LINE for line in folded.split(CRLF)):
        raise MessageError(f"header {name} cannot be folded under {MAX_LINE} characters")
    return f"{name}: {folded}{CRLF}"


def body_part(text: str, subtype: str) -> tuple[str, bytes]:
    """(MIME headers, encoded body) of a text part: 7bit when ASCII with lines
    within 998 characters, otherwise UTF-8 quoted-printable. Any line ends
    (CRLF, LF, lone CR) become CRLF; the body ends with a line end."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    if text.isascii() and max(map(len, text.split("\n"))) <= MAX_LINE:
        charset, encoding = "us-ascii", "7bit"
        body = text.replace("\n", CRLF).encode("ascii")
    else:
        charset, encoding = "utf-8", "quoted-printable"
        qp = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True, header=False)
        body = qp.replace(b"\n", b"\r\n")
    headers = (
        f'Content-Type: text/{subtype}; charset="{charset}"{CRLF}'
        f"Content-Transfer-Encoding: {encoding}{CRLF}"
    )
    return headers, body


def _boundary(parts: list[bytes]) -> str:
    # "=_" never occurs in quoted-printable text; 7bit parts are checked.
    while True:
        boundary = f"=_mailpipe_{secrets.token_hex(12)}"
        token = boundary.encode()
        if not any(token in part for part in parts):
            return boundary


@functools.lru_cache(maxsize=4)
def _date_line(second: int) -> str:
    """The Date header; thousands of messages share each second."""
    return header_line("Date", email.utils.formatdate(second, localtime=False))


def _structured(record: DeliveryRecord, now: float) -> bytes:
    content = record.content
    assert content is not None  # DeliveryRecord guarantees content xor raw
    head = [
        header_line(
            "From",
            email.utils.formataddr((content.from_name or "", record.sender), charset="utf-8"),
        ),
        header_line("To", ", ".join(r.address for r in record.recipients)),
        header_line("Subject", content.subject),
        _date_line(int(now)),
        header_line("Message-ID", f"<{record.id}@{record.sender.rpartition('@')[2]}>"),
    ]
    if content.reply_to:
        head.append(header_line("Reply-To", content.reply_to))
    unsub = record.list_unsubscribe
    if unsub is not None:
        targets = [unsub.url, f"mailto:{unsub.mailto}" if unsub.mailto else None]
        head.append(header_line("List-Unsubscribe", ", ".join(f"<{t}>" for t in targets if t)))
        if unsub.one_click:
            head.append(header_line("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    for name, value in content.headers:
        head.append(header_line(name, value))
    head.append(f"MIME-Version: 1.0{CRLF}")

    bodies = [(t, s) for t, s in ((content.text, "plain"), (content.html, "html")) if t is not None]
    if len(bodies) == 1:
        part_headers, body = body_part(*bodies[0])
        return ("".join(head) + part_headers + CRLF).encode("ascii") + body
    parts = [body_part(text, subtype) for text, subtype in bodies]
    boundary = _boundary([body for _, body in parts])
    head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"{CRLF}')
    out = [("".join(head) + CRLF).encode("ascii")]
    for part_headers, body in parts:
        out.append(f"--{boundary}{CRLF}{part_headers}{CRLF}".encode("ascii"))
        out.append(body)
    out.append(f"--{boundary}--{CRLF}".encode("ascii"))
    return b"".join(out)
