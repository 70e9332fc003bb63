"""RFC 5322 bytes for a delivery record: MIME, list headers, DKIM signature.

The operator has already rendered templates and merge fields, so content is
final here; this module only assembles it (and signs it with `dkim_signing`
when asked: the relay's dispatcher signs in a worker thread instead). Records
that arrive `raw` (submission endpoint) pass through, signed if the pool signs.

Why not `email.message` + a generator: profiling the relay under load showed
the stdlib's object model and generator at 190-210 us per message (a third of
the relay's CPU; the modern EmailMessage API was 4x worse). The messages the
relay builds have one fixed shape, text and/or HTML, so they are composed
directly, with the standard library doing every encoding that has rules:
`email.header.Header` for RFC 2047 words and folding, `email.utils` for
addresses and dates, `binascii.b2a_qp` for quoted-printable bodies. Output
is checked against the stdlib parser in the unit tests.

Header hygiene is enforced here, at the one place every header is written,
whatever the wire model let through (issue 10): a C0 control character (CR,
LF, NUL, VT, FF, ...) or DEL in any header is refused; `content.headers` may
not replace a header the composer owns (`RESERVED_HEADERS`) nor use a name
outside RFC 5322's printable ASCII; List-Unsubscribe URLs are percent-encoded
so a merge field cannot close the `<...>` and add a target; addresses carry
A-label domains (`addresses.smtp_address`); raw messages get CRLF line ends,
no NUL, no header control characters and no Bcc; a record with several recipients
is addressed `To: undisclosed-recipients:;` (RFC 5322 3.4 group syntax), one
message for all of them that shows none of them to the others. A refusal is a
`MessageError`: the record goes to the DLQ with the reason.

Composing and header hygiene share the same header rules and the hot path, so
they stay in one module.
"""

from __future__ import annotations

import binascii
import email.utils
import functools
import re
import secrets
import urllib.parse
from collections.abc import Sequence
from email.header import Header

from mailpipe.contracts.errors import PermanentError
from mailpipe.contracts.wire import DeliveryRecord, ListUnsubscribe

from .addresses import smtp_address
from .dkim_signing import Signer, SigningError, openssl_rsa_sign
from .unsubscribe_links import UnsubscribeLinks

__all__ = [
    "MessageError",
    "Signer",
    "SigningError",
    "build_message",
    "header_line",
    "openssl_rsa_sign",
]

CRLF = "\r\n"
MAX_HEADER_LINE = 78  # RFC 5322 2.1.1: SHOULD not exceed 78 characters
MAX_LINE = 998  # RFC 5322 2.1.1: MUST not exceed 998 characters
# Headers the composer writes (or a signer or MTA adds): `content.headers` may
# not set them, so a record cannot forge its sender, add hidden recipients or
# break the MIME structure.
RESERVED_HEADERS = frozenset(
    {
        "from", "sender", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id",
        "mime-version", "list-unsubscribe", "list-unsubscribe-post", "dkim-signature",
        "return-path", "received", "x-mailpipe-trace", "feedback-id",
    }
)  # fmt: skip
RESERVED_PREFIXES = ("content-", "resent-")  # MIME structure; RFC 5322 3.6.6 resent blocks
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 2.2 ftext: printable ASCII but ":"
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # C0 controls (tab allowed) and DEL
_RAW_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # the same, in a raw header block
# RFC 5322 3.2.3 atext plus "." (dot-atom-text): what a Message-ID's left part may hold.
_NOT_ATEXT = re.compile(r"[^A-Za-z0-9!#$&'*+/=?^_`{|}~.-]")
# RFC 3986 characters a URL keeps as they are; anything else ("<", ">", ",", quotes,
# spaces, non-ASCII) is percent-encoded, so one URL stays one List-Unsubscribe target.
_URL_SAFE = "-._~:/?#[]@!$&'()*+;=%"
UNDISCLOSED = "undisclosed-recipients:;"  # RFC 5322 3.4: an empty group


class MessageError(PermanentError, ValueError):
    """A record whose message cannot be built (goes to the DLQ with this reason)."""


def build_message(
    record: DeliveryRecord,
    now: float,
    signer: Signer | None = None,
    stamp: Sequence[tuple[str, str]] = (),
    links: UnsubscribeLinks | None = None,
) -> bytes:
    """The bytes to send for `record` (one message for all its recipients), CRLF line ends.
    `stamp`: the relay's own headers (trace token, Feedback-ID: `stamps`), written
    first in a raw message's header block, after the content's headers otherwise.
    `links`: the pool's one-click endpoint, for records that ask for it."""
    if record.raw is not None:
        data = "".join(stamp_line(n, v) for n, v in stamp).encode() + _raw(record.raw)
    else:
        try:
            data = _structured(record, now, stamp, links)
        except (ValueError, TypeError, UnicodeError) as exc:
            raise MessageError(f"cannot build message {record.id}: {exc}") from exc
    if signer is None:
        return data
    try:
        return signer.sign(data)
    except SigningError as exc:
        raise MessageError(f"cannot sign message {record.id}: {exc}") from exc


def _raw(raw: str) -> bytes:
    """A complete message as given, made safe to send: CRLF line ends (a lone CR
    or LF is a line end, never sent bare: RFC 5321 2.3.8), no NUL (RFC 5322 2.3),
    no control character in the header block, and no Bcc header (RFC 5322
    3.6.3: it must not reach the other recipients)."""
    data = raw.encode("utf-8", "surrogateescape")
    if b"\x00" in data:
        raise MessageError("raw message contains NUL (RFC 5322 2.3)")
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    head, blank, body = data.partition(b"\n\n")
    kept: list[bytes] = []
    in_bcc = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):  # a folded continuation of the previous field
            if not in_bcc:
                kept.append(line)
            continue
        in_bcc = line.split(b":", 1)[0].strip().lower() == b"bcc"
        if not in_bcc:
            kept.append(line)
    bad = _RAW_CONTROL.search(b"".join(kept))
    if bad is not None:
        raise MessageError(f"raw message header contains control character {bad.group()!r}")
    return (b"\n".join(kept) + blank + body).replace(b"\n", b"\r\n")


def header_line(name: str, value: str) -> str:
    """`Name: value` with CRLF: as it is when short and ASCII, otherwise RFC 2047
    encoded (UTF-8) and folded by `email.header.Header`. A control character in
    the value is refused, never written (header injection, issue 10)."""
    bad = _CONTROL.search(value)
    if bad is not None:
        raise MessageError(f"header {name} contains control character {bad.group()!r}")
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


_UNFOLDED = re.compile(r"[!-~]{1,900}")  # one printable ASCII word, within 998 with its name


def stamp_line(name: str, value: str) -> str:
    """A header of the relay's own whose value is one word (a token): never
    folded, so a reader gets the token back without the folding whitespace."""
    if _UNFOLDED.fullmatch(value):
        return f"{name}: {value}{CRLF}"
    return header_line(name, value)


def extra_header_line(name: str, value: str) -> str:
    """A header from `content.headers`: a well-formed name the composer does not own."""
    if not _HEADER_NAME.fullmatch(name):
        raise MessageError(f"invalid header name {name!r}: RFC 5322 allows printable ASCII but ':'")
    lower = name.lower()
    if lower in RESERVED_HEADERS or lower.startswith(RESERVED_PREFIXES):
        raise MessageError(f"header {name} is reserved: the relay writes it from the record")
    return header_line(name, value)


def address_line(name: str, address: str) -> str:
    """An address header. A-label domains; an address that still is not ASCII (a
    UTF-8 local part, which SMTPUTF8 carries) goes raw as RFC 6532 allows: RFC 2047
    words are not allowed inside an address."""
    address = smtp_address(address)
    if address.isascii():
        return header_line(name, address)
    if _CONTROL.search(address):
        raise MessageError(f"header {name} contains a control character")
    return f"{name}: {address}{CRLF}"


def _message_id(record: DeliveryRecord) -> str:
    """`<id@sender domain>`, the id percent-encoded where it is not atext, so an odd
    id still gives one well-formed token (and stays readable for DSN matching)."""
    left = _NOT_ATEXT.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), record.id)
    left = ".".join(part or "%2E" for part in left.split("."))  # no empty dot-atom parts
    domain = smtp_address(record.sender).rpartition("@")[2]
    return f"<{left}@{domain}>"


def _list_unsubscribe(unsub: ListUnsubscribe, url: str | None, mailto: str | None) -> str:
    """RFC 2369's list of targets, the https URL first (RFC 8058 one-click); the
    record's own mailto, else the pool's (`u-<token>@<bounce domain>`)."""
    targets = []
    if url:
        targets.append(urllib.parse.quote(url, safe=_URL_SAFE))
    mailto = unsub.mailto or mailto
    if mailto:
        targets.append(f"mailto:{smtp_address(mailto)}")
    return ", ".join(f"<{t}>" for t in targets)


def _structured(
    record: DeliveryRecord,
    now: float,
    stamp: Sequence[tuple[str, str]] = (),
    links: UnsubscribeLinks | None = None,
) -> bytes:
    content = record.content
    assert content is not None  # DeliveryRecord guarantees content xor raw
    if len(record.recipients) == 1:
        to = address_line("To", record.recipients[0].address)
    else:  # one message for all: no recipient sees the others
        to = header_line("To", UNDISCLOSED)
    if content.from_name is not None and _CONTROL.search(content.from_name):
        raise MessageError("header From contains a control character in its display name")
    head = [
        header_line(
            "From",
            email.utils.formataddr(
                (content.from_name or "", smtp_address(record.sender)), charset="utf-8"
            ),
        ),
        to,
        header_line("Subject", content.subject),
        _date_line(int(now)),
        header_line("Message-ID", _message_id(record)),
    ]
    if content.reply_to:
        head.append(address_line("Reply-To", content.reply_to))
    unsub = record.list_unsubscribe
    if unsub is not None:
        url, mailto = unsub.url, None
        if unsub.endpoint:
            if links is None:
                raise MessageError(
                    "the record asks for the pool's one-click unsubscribe endpoint and this"
                    " pool has none (SendingPool spec.unsubscribe)"
                )
            url, mailto = links.targets(record, now)
        head.append(header_line("List-Unsubscribe", _list_unsubscribe(unsub, url, mailto)))
        if unsub.one_click:
            head.append(header_line("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    for name, value in content.headers:
        head.append(extra_header_line(name, value))
    for name, value in stamp:
        head.append(stamp_line(name, value))
    head.append(f"MIME-Version: 1.0{CRLF}")

    bodies = [(t, s) for t, s in ((content.text, "plain"), (content.html, "html")) if t is not None]
    if len(bodies) == 1:
        part_headers, body = body_part(*bodies[0])
        return ("".join(head) + part_headers + CRLF).encode() + body
    parts = [body_part(text, subtype) for text, subtype in bodies]
    boundary = _boundary([body for _, body in parts])
    head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"{CRLF}')
    out = [("".join(head) + CRLF).encode()]
    for part_headers, body in parts:
        out.append(f"--{boundary}{CRLF}{part_headers}{CRLF}".encode("ascii"))
        out.append(body)
    out.append(f"--{boundary}--{CRLF}".encode("ascii"))
    return b"".join(out)
