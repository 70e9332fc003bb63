"""Mail addresses as SMTP, DNS and headers need them (RFC 1035, 5321, 5890, 6531).

Records carry addresses as people write them: `u@bücher.test`, `u@x.test.`,
`u@[127.0.0.1]`. DNS queries, SMTP commands, certificate names and message
headers need one ASCII spelling of the domain; it is computed here, in one
place, so the delivery layer and the message composer cannot disagree:

- IDN domains become A-labels (IDNA 2008 with the UTS 46 mapping, the `idna`
  package), so `u@bücher.test` needs no SMTPUTF8: only a non-ASCII local part
  does (RFC 6531 section 3.2);
- the RFC 1035 limits are checked before any lookup, because a name that
  breaks them can never be delivered and makes the DNS library raise;
- one trailing dot is dropped (`x.test.` is the same domain as `x.test`);
- address literals (`[127.0.0.1]`, RFC 5321 section 4.1.3) are recognised so
  callers can refuse them with a clear reason.

Pure functions, no IO: used by both `message` and `delivery`.
"""

from __future__ import annotations

import functools
import re

import idna

from mailpipe.contracts.errors import PermanentError

MAX_LABEL = 63  # RFC 1035 2.3.4: octets per label
MAX_NAME = 253  # RFC 1035 2.3.4: 255 octets in wire form = 253 characters of dotted text
# RFC 5321 4.1.2 sub-domain (letters, digits, hyphens), plus the underscore that
# real-world host names carry and resolvers accept.
_ASCII_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")
_CACHE_SIZE = 4096  # one entry per distinct domain in flight; campaigns repeat few domains


class InvalidDomain(PermanentError, ValueError):
    """A destination domain that can never be delivered to: the reason says why."""


class AddressLiteral(InvalidDomain):
    """`[192.0.2.1]` or `[IPv6:...]`: an address literal instead of a domain name."""


def is_address_literal(domain: str) -> bool:
    return domain.startswith("[") and domain.endswith("]")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def ascii_domain(domain: str) -> str:
    """The lower-case ASCII (A-label) form of `domain`; InvalidDomain if it has none."""
    if is_address_literal(domain):
        raise AddressLiteral(f"{domain} is an address literal, not a domain name")
    name = domain[:-1] if domain.endswith(".") else domain
    if not name:
        raise InvalidDomain("empty domain")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidDomain(f"{_short(domain)} is not a valid IDN domain: {exc}") from None
    if len(name) > MAX_NAME:
        raise InvalidDomain(f"domain of {len(name)} characters is over the {MAX_NAME} of RFC 1035")
    for label in name.split("."):
        if not label:
            raise InvalidDomain(f"{_short(domain)} has an empty label")
        if len(label) > MAX_LABEL:
            raise InvalidDomain(
                f"{_short(domain)} has a label of {len(label)} characters,"
                f" over the {MAX_LABEL} of RFC 1035"
            )
        if not _ASCII_LABEL.fullmatch(label):
            raise InvalidDomain(f"{_short(domain)} has a label with characters DNS names lack")
    return name.lower()


def split(address: str) -> tuple[str, str]:
    """(local part, domain) of `local@domain`, split at the last `@`."""
    local, _, domain = address.rpartition("@")
    return local, domain


def smtp_address(address: str) -> str:
    """`address` as it goes into MAIL FROM / RCPT TO and headers: the domain as an
    A-label when it can have one (an invalid domain is left as it is: the
    transport refuses it before any command)."""
    local, domain = split(address)
    if domain.isascii() and not domain.endswith("."):
        return address
    try:
        return f"{local}@{ascii_domain(domain)}"
    except InvalidDomain:
        return address


def needs_smtputf8(address: str) -> bool:
    """True when the address cannot be written in ASCII: a non-ASCII local part
    (a non-ASCII domain has an A-label, RFC 6531 section 3.2)."""
    return not smtp_address(address).isascii()


def _short(domain: str) -> str:
    """A domain quoted for a reason text, cut so a 300-character name stays readable."""
    return repr(domain if len(domain) <= 80 else domain[:77] + "...")
