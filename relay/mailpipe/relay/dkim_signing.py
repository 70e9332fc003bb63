"""DKIM signatures (RFC 6376, rsa-sha256, relaxed/simple) in two steps: the header
work on the event loop, the hashing and RSA in a worker thread.

Why not dkimpy: profiled per message, `dkim.sign` re-parses the PEM key with
its pure-Python ASN.1 reader on every call (about 450 us), computes RSA with
Python's pow() (8 ms for 2048 bits) and splits the whole message into lines
(about 1 ms for 100 KB); its helpers around an OpenSSL RSA step still cost
about 95 us a message (every header canonicalised by three regular
expressions, then selected; the signature folded twice). Here the key is
parsed once by `cryptography`, only the header block is parsed, only the
signed fields are canonicalised, and the output is dkimpy's byte for byte
(tests/relay/unit/test_dkim_signing.py signs with both and compares; dkimpy
verifies every signature in the tests).

Why two steps: the RSA step is most of a signature (about 290 us for 2048
bits) and `cryptography` releases the GIL while OpenSSL computes it, as
hashlib does for a body over 2 KB, so `Prepared.finish` can run in a thread
beside the event loop: on two cores the loop keeps delivering while the other
core signs. `Signer.prepare` is what can refuse a message (no From header, a
malformed header block): it runs where the message is built, so a refusal
sends the record to the DLQ before any budget is spent on it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from mailpipe.contracts.config import DKIMSettings
from mailpipe.contracts.errors import PermanentError


class SigningError(PermanentError, ValueError):
    """A message that cannot be signed (`message.MessageError` derives from it)."""


_PREHASHED: Final = MappingProxyType({b"rsa-sha256": hashes.SHA256, b"rsa-sha1": hashes.SHA1})
ALGORITHM: Final = b"rsa-sha256"  # RFC 8301: rsa-sha1 must not be used for signing
# relaxed header canonicalisation survives the refolding MTAs do; simple for the
# body is dkimpy's default, what the relay has always signed with.
CANONICALIZATION: Final = b"relaxed/simple"
SIGNATURE_HEADER: Final = b"DKIM-Signature"
# As dkimpy: a b= placeholder this long folds onto a line of its own, so the
# tags before it keep their folding when the real signature replaces it.
_B_PLACEHOLDER: Final = b"0" * 60
FOLD_COLUMN: Final = 72  # dkimpy folds the signature at column 72, its name included
_CRLF: Final = b"\r\n"
_HEADER_END: Final = b"\r\n\r\n"
# RFC 5322 2.2: a field name is printable ASCII (dkimpy reads up to the first ":"
# after the first character); deleting these from a name must leave nothing.
_NAME_CHARS: Final = bytes(range(0x21, 0x7F))
_WSP_RUN: Final = re.compile(rb"[\t ]+")
_LINE_END: Final = re.compile(rb"\r?\n")
# The b= tag's value, folding whitespace included (RFC 6376 3.5: hashed empty).
_FWS: Final = rb"(?:(?:\s*\r?\n)?\s+)?"
_B_TAG: Final = re.compile(rb"([;\s]b" + _FWS + rb"=)(?:" + _FWS + rb"[a-zA-Z0-9+/=])*(?:\r?\n\Z)?")


def openssl_rsa_sign(key: rsa.RSAPrivateKey, algorithm: bytes, digest: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 (RFC 8017) of a DKIM hash, as dkimpy's own code computes it."""
    return key.sign(digest, padding.PKCS1v15(), utils.Prehashed(_PREHASHED[algorithm]()))


Field = tuple[bytes, bytes]  # (name as written, value with its folding and final CRLF)


def parse_header_block(message: bytes) -> tuple[list[Field], bytes]:
    """(header fields, body): RFC 5322 fields the way dkimpy's `rfc822_parse`
    reads them (continuation lines joined, an mbox `From ` line skipped). A
    message with CRLF line ends only in its header block (all `build_message`
    writes) is parsed up to its blank line and its body taken as it is;
    anything else is split whole, LF taken as a line end too, and its body
    rejoined with CRLF, as dkimpy does."""
    head, sep, body = message.partition(_HEADER_END)
    if sep and head[:2] != _CRLF and head.count(b"\n") == head.count(_CRLF):
        return _fields(head.split(_CRLF)), body
    lines = _LINE_END.split(message)
    end = next((i for i, line in enumerate(lines) if not line), len(lines))
    return _fields(lines[:end]), _CRLF.join(lines[end + 1 :])


def _fields(lines: list[bytes]) -> list[Field]:
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise SigningError("the header block starts with a continuation line")
            fields[-1][1] += line + _CRLF
            continue
        colon = line.find(b":", 1)
        if colon > 0 and not line[:colon].translate(None, _NAME_CHARS):
            fields.append([line[:colon], line[colon + 1 :] + _CRLF])
        elif not line.startswith(b"From "):
            raise SigningError(f"not a header field: {line[:80]!r}")
    return [(name, value) for name, value in fields]


def select(
    fields: list[Field], names: tuple[bytes, ...], lowered: list[bytes] | None = None
) -> list[Field]:
    """The fields to sign for the lower-case `names` (the h= tag), RFC 6376 5.4.2:
    the last instance of a name first, a repeated name the instance above it.
    `lowered`: the fields' names in lower case, when the caller has them."""
    if lowered is None:
        lowered = [name.lower() for name, _ in fields]
    chosen = []
    below: dict[bytes, int] = {}
    for name in names:
        i = below.get(name, len(fields))
        while i > 0:
            i -= 1
            if lowered[i] == name:
                chosen.append(fields[i])
                break
        below[name] = i
    return chosen


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """`name:value` with relaxed canonicalisation (RFC 6376 3.4.2): name lower
    case, value unfolded, runs of spaces and tabs one space, no space at either
    end, CRLF after (the same bytes as dkimpy's `Relaxed.canonicalize_headers`)."""
    unfolded = value.replace(_CRLF, b"").replace(b"\n", b"")
    if b"\t" in unfolded or b"  " in unfolded:  # most values have neither: no regex
        unfolded = _WSP_RUN.sub(b" ", unfolded)
    return name.lower().rstrip() + b":" + unfolded.strip() + _CRLF


def fold(value: bytes, namelen: int) -> bytes:
    """A tag list folded at FOLD_COLUMN (the field name's length counted on the
    first line), at spaces where there are some: dkimpy's `fold`, so the
    signature header is the one dkimpy writes."""
    width = FOLD_COLUMN - namelen
    if len(value) <= width:
        return value
    if len(value) - value.rfind(_CRLF) == 2 and len(value) <= width + 2:
        return value
    start = value.rfind(b"\r\n ")
    done = b""
    if start != -1:
        done, value = value[: start + 3], value[start + 3 :]
    while len(value) > width:
        space = value[:width].rfind(b" ")
        if space == -1:
            done += value[:width] + b"\r\n "
            value = value[width:]
        else:
            done += value[:space] + b"\r\n "
            value = value[space + 1 :]
        width = FOLD_COLUMN - 1
    return done + value


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message whose headers are parsed and canonicalised, ready for `finish`
    (pure CPU on values nobody changes: safe in a worker thread)."""

    signer: Signer
    message: bytes
    body: bytes
    names: tuple[bytes, ...]  # h=: the configured names the message has, lower case
    canonical: bytes  # the fields h= names, relaxed, in h= order

    def body_hash(self) -> bytes:
        """bh=: SHA-256 of the body with simple canonicalisation (RFC 6376 3.4.3:
        trailing empty lines removed, one CRLF at the end)."""
        body, end = self.body, len(self.body)
        while end >= 2 and body.endswith(_CRLF, 0, end):
            end -= 2
        digest = hashlib.sha256(memoryview(body)[:end])
        digest.update(_CRLF)
        return base64.b64encode(digest.digest())

    def finish(self, now: float | None = None) -> bytes:
        """The message with its DKIM-Signature in front. `now`: the t= tag
        (seconds; the current time when None)."""
        signer = self.signer
        stamp = int(time.time() if now is None else now)
        tags = [
            (b"v", b"1"),
            (b"a", ALGORITHM),
            (b"c", CANONICALIZATION),
            (b"d", signer.domain),
            (b"i", b"@" + signer.domain),
            (b"q", b"dns/txt"),
            (b"s", signer.selector),
            (b"t", str(stamp).encode("ascii")),
            (b"h", b" : ".join(self.names)),
            (b"bh", self.body_hash()),
            (b"b", _B_PLACEHOLDER),
        ]
        namelen = len(SIGNATURE_HEADER)
        unsigned = _B_TAG.sub(rb"\1", fold(b"; ".join(b"=".join(t) for t in tags), namelen))
        h = hashlib.sha256(self.canonical)
        # the signature field itself, b= empty and without its final CRLF (RFC 6376 3.7)
        h.update(relaxed_header(SIGNATURE_HEADER, b" " + unsigned)[:-2])
        signature = openssl_rsa_sign(signer.key, ALGORITHM, h.digest())
        tags[-1] = (b"b", base64.b64encode(signature))
        value = fold(b"; ".join(b"=".join(t) for t in tags) + _CRLF, namelen)
        return SIGNATURE_HEADER + b": " + value + self.message


class Signer:
    """DKIM signer with its key read and parsed once (keys come from a mounted
    Secret); signatures are byte for byte `dkim.sign`'s with the same key,
    selector, time, header list and relaxed/simple canonicalisation."""

    def __init__(self, settings: DKIMSettings) -> None:
        self.settings = settings
        loaded = serialization.load_pem_private_key(
            Path(settings.private_key_path).read_bytes(), password=None
        )
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise SigningError(
                f"DKIM key {settings.private_key_path} is not an RSA key"
                " (the relay signs rsa-sha256)"
            )
        self.key = loaded
        self.names = tuple(h.encode().lower() for h in settings.headers)
        self.domain = settings.domain.encode()
        self.selector = settings.selector.encode()

    def prepare(self, message: bytes) -> Prepared:
        """Parse and canonicalise what is signed; refuses (SigningError) a message
        without From (RFC 6376 5.4) or with a malformed header block."""
        fields, body = parse_header_block(message)
        lowered = [name.lower() for name, _ in fields]
        present = set(lowered)
        names = tuple(n for n in self.names if n in present)
        if b"from" not in names:
            raise SigningError("cannot DKIM-sign a message without a From header (RFC 6376 5.4)")
        chosen = select(fields, names, lowered)
        canonical = b"".join(relaxed_header(n, v) for n, v in chosen)
        return Prepared(self, message, body, names, canonical)

    def sign(self, message: bytes, now: float | None = None) -> bytes:
        """Both steps at once: `message` with a DKIM-Signature in front (t=`now`)."""
        return self.prepare(message).finish(now)
