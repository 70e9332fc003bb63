"""Signed tokens that let what comes back find what was sent.

A bounce (to the VERP Return-Path), a complaint (which quotes the Return-Path
or the trace header) and a one-click unsubscribe (a URL in the message) each
arrive with nothing but what the message carried, often rewritten or
truncated by the reporting MTA. The token carries everything needed to
attribute the signal: the pool, the campaign and its variant, the recipient
and the message id, plus what it is for (`Purpose`: a bounce token must not
unsubscribe anyone) and when it was made (so it can expire).

Signed with HMAC-SHA256 (truncated to 96 bits: RFC 2104 allows truncation to
half the hash and more; 96 bits is what TLS and IPsec use) under a key from a
Secret. Keys have an id; a `TokenKeys` holds the current key (signs) and the
previous ones (verify only), so a key is rotated by adding a new one and
removing the old one after the longest validity. A token names its
namespace, and a receiver that serves one namespace refuses another's.

Encoded in RFC 4648 base32 (lower case, no padding) because it travels in an
address local part, which mail systems may lower-case, and in a URL path:
both accept [a-z2-7]. The payload is zlib-compressed when that makes it
shorter. Long addresses still make long local parts (over RFC 5321's
64-octet SHOULD); receivers of our own mail accept them, and the
unsubscribe URL and the trace header have no such limit.

Pure: no clock (the caller passes `now`) and no IO but `keys_from_directory`,
which reads the mounted key Secret for the relay and the receivers alike.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

__all__ = [
    "BOUNCE_PREFIX",
    "DEFAULT_VALIDITY_SECONDS",
    "UNSUBSCRIBE_PREFIX",
    "Purpose",
    "TokenError",
    "TokenKeys",
    "TokenPayload",
    "keys_from_directory",
    "keys_from_secret",
    "return_path",
    "sign",
    "token_of_address",
    "verify",
]

VERSION = "a"  # one character of the token alphabet
MAC_BYTES = 12
SEPARATOR = "\x1f"  # ASCII unit separator: never in an address, an id or a name
MAX_TOKEN_LENGTH = 2048  # characters: a longer one is refused before any decoding
MAX_FIELD_LENGTH = 320
KEY_ID_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
# Asynchronous bounces arrive up to the remote queue lifetime (Postfix: 5 days)
# after the send; complaints and unsubscribes weeks later. 60 days covers both
# and bounds how long a leaked unsubscribe link stays usable.
DEFAULT_VALIDITY_SECONDS = 60 * 86400
_COMPRESSED, _PLAIN = "z", "p"
# Local-part prefixes of the bounce domain's token addresses: the VERP Return-Path
# `b-<token>` and the List-Unsubscribe mailto `u-<token>` (RFC 2369).
BOUNCE_PREFIX, UNSUBSCRIBE_PREFIX = "b", "u"


class Purpose(enum.StrEnum):
    """What a token may do. A token made for one purpose is refused for another."""

    BOUNCE = "b"
    UNSUBSCRIBE = "u"
    TRACE = "t"


class TokenError(ValueError):
    """A token that is malformed, forged, tampered with, expired, for another
    purpose or another namespace: `reason` is a fixed word for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TokenPayload:
    namespace: str
    pool: str
    recipient: str
    message_id: str
    campaign: str | None = None  # the Campaign's name, in `namespace`
    variant: str | None = None
    issued_at: int = 0  # unix seconds
    # What an unsubscribe suppresses: one mailing list, or (None) the whole
    # namespace. Signed, so a recipient cannot widen or narrow it. Written only
    # when set: a token without it is exactly what it was before it existed.
    mailing_list: str | None = None

    def _fields(self) -> list[str]:
        fields = [
            self.namespace,
            self.pool,
            self.recipient,
            self.message_id,
            self.campaign or "",
            self.variant or "",
            str(self.issued_at),
        ]
        return fields if self.mailing_list is None else [*fields, self.mailing_list]


@dataclass(frozen=True)
class TokenKeys:
    """The signing key (`current`, an id in `keys`) and every key still accepted."""

    keys: Mapping[str, bytes]
    current: str

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValueError(f"current key id {self.current!r} is not among the keys")
        for kid, key in self.keys.items():
            if not kid or not set(kid) <= KEY_ID_ALPHABET or len(kid) > 8:
                raise ValueError(f"key id {kid!r}: 1-8 characters of a-z and 2-7")
            if len(key) < 32:
                raise ValueError(f"key {kid!r} is {len(key)} bytes; at least 32 are needed")
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes:
    padded = text.upper() + "=" * (-len(text) % 8)
    return base64.b32decode(padded)


def _mac(key: bytes, purpose: Purpose, kid: str, body: str) -> bytes:
    message = f"mailpipe-feedback-{VERSION}|{purpose.value}|{kid}|{body}".encode()
    return hmac.new(key, message, hashlib.sha256).digest()[:MAC_BYTES]


def sign(payload: TokenPayload, purpose: Purpose, keys: TokenKeys) -> str:
    """The token: `<purpose><version><kid>.<body>.<mac>`, all in [a-z2-7.]."""
    fields = payload._fields()
    for value in fields:
        if SEPARATOR in value or len(value) > MAX_FIELD_LENGTH:
            raise ValueError(f"field {value[:40]!r} cannot go into a token")
    raw = SEPARATOR.join(fields).encode()
    packed = zlib.compress(raw, 9)
    body = _COMPRESSED + _b32(packed) if len(packed) < len(raw) else _PLAIN + _b32(raw)
    kid = keys.current
    mac = _mac(keys.keys[kid], purpose, kid, body)
    return f"{purpose.value}{VERSION}{kid}.{body}.{_b32(mac)}"


def verify(
    token: str,
    purpose: Purpose,
    keys: TokenKeys,
    *,
    now: float,
    namespace: str | None = None,
    validity_seconds: int = DEFAULT_VALIDITY_SECONDS,
) -> TokenPayload:
    """The payload of a good token, or TokenError saying what is wrong with it.

    Case-insensitive (a local part may have been upper-cased on the way)."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("malformed", f"token longer than {MAX_TOKEN_LENGTH} characters")
    token = token.lower()
    parts = token.split(".")
    if len(parts) != 3 or len(parts[0]) < 3:
        raise TokenError("malformed", "not a mailpipe token (<head>.<body>.<mac>)")
    head, body, mac_text = parts
    if head[0] != purpose.value:
        raise TokenError("purpose", f"token made for another purpose, not {purpose.name.lower()}")
    if head[1] != VERSION:
        raise TokenError("malformed", f"token version {head[1]!r} unknown")
    kid = head[2:]
    key = keys.keys.get(kid)
    if key is None:
        raise TokenError(
            "unknown_key", f"signed with key {kid!r}, which is not (or no longer) held"
        )
    try:
        mac = _unb32(mac_text)
    except (binascii.Error, ValueError) as exc:
        raise TokenError("malformed", "signature is not base32") from exc
    if not hmac.compare_digest(mac, _mac(key, purpose, kid, body)):
        raise TokenError("forged", "signature does not match: forged or tampered with")
    # Signed by us from here on: decoding errors would be our own bug.
    try:
        data = _unb32(body[1:])
        raw = zlib.decompress(data) if body[:1] == _COMPRESSED else data
        fields = raw.decode().split(SEPARATOR)
        list_name = fields.pop() if len(fields) == 8 else None
        namespace_, pool, recipient, message_id, campaign, variant, issued = fields
        payload = TokenPayload(
            namespace=namespace_,
            pool=pool,
            recipient=recipient,
            message_id=message_id,
            campaign=campaign or None,
            variant=variant or None,
            issued_at=int(issued),
            mailing_list=list_name,
        )
    except (binascii.Error, ValueError, zlib.error) as exc:
        raise TokenError("malformed", f"signed body does not decode: {exc}") from exc
    if now - payload.issued_at > validity_seconds:
        raise TokenError("expired", "token expired")
    if namespace is not None and payload.namespace != namespace:
        raise TokenError(
            "foreign", f"token for namespace {payload.namespace!r}, this serves {namespace!r}"
        )
    return payload


def return_path(token: str, bounce_domain: str, prefix: str = BOUNCE_PREFIX) -> str:
    """The VERP envelope sender for a message: `<prefix>-<token>@<bounce_domain>`
    (with UNSUBSCRIBE_PREFIX, the address of the List-Unsubscribe mailto)."""
    return f"{prefix}-{token}@{bounce_domain}"


def token_of_address(address: str, bounce_domain: str, prefix: str = BOUNCE_PREFIX) -> str | None:
    """The token in a VERP address of `bounce_domain`, or None if it is not one."""
    local, at, domain = address.rpartition("@")
    if not at or domain.lower() != bounce_domain.lower():
        return None
    lead = f"{prefix}-"
    if not local.lower().startswith(lead):
        return None
    return local[len(lead) :]


def keys_from_secret(data: Mapping[str, bytes], current: str | None = None) -> TokenKeys:
    """A Secret's data (key id → raw key bytes) as TokenKeys; the signing key is
    `current`, else the last id in sorted order (rotate by adding a later id)."""
    if not data:
        raise ValueError("the feedback key Secret holds no key")
    kid = current or sorted(data)[-1]
    return TokenKeys(dict(data), kid)


def keys_from_directory(path: str | Path, current: str | None = None) -> TokenKeys:
    """The keys of a Secret mounted at `path` (one file per key id; the kubelet's
    `..data` links and dot files are skipped), or ValueError saying what is wrong:
    a relay or receiver without a usable key must not start."""
    directory = Path(path)
    try:
        names = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise ValueError(f"feedback key Secret not readable at {directory}: {exc}") from exc
    data = {p.name: p.read_bytes().strip() for p in names if p.is_file()}
    return keys_from_secret(data, current)
