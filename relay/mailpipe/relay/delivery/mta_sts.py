"""MTA-STS (RFC 8461) as data: the TXT record, the policy file, MX patterns, the cache rule.

No IO here (the fetcher, `mta_sts_fetch`, does DNS and HTTPS and asks this
module), so every rule is tested on hostile input without a network:

- `_mta-sts.<domain>` TXT (section 3.1): records not starting `v=STSv1;` are
  ignored; none, several, or one that breaks the grammar means "no policy";
- the policy file (section 3.2): `version: STSv1`, `mode`, `max_age`, one or
  more `mx` (none is allowed only with `mode: none`); unknown keys ignored, a
  repeated key other than `mx` makes the policy invalid (which value would be
  meant is a guess, and a guess must not decide where mail goes);
- MX patterns (section 4.1): case-insensitive, `*.` stands for exactly one
  leftmost label, so `*.example.com` matches `mx.example.com`, not
  `example.com` nor `a.b.example.com`;
- the cache (sections 3.3, 5.1): a fetched policy holds for its max_age; a
  TXT id different from the cached one asks for a new fetch; a failed fetch,
  a missing or broken TXT record keep the cached policy until it expires, and
  without one the domain is treated as having no policy. So a failure never
  blocks mail beyond what a policy the domain published says.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailpipe.contracts.config import TLSMode

from .tls_policy import TLSPlan

MAX_AGE_LIMIT_SECONDS = 31_557_600  # section 3.2: the largest max_age a sender must honour
MAX_POLICY_BYTES = 64 * 1024  # section 3.3: "a reasonable maximum" for the body; ours
MAX_MX_PATTERNS = 100  # far above any published policy; bounds the match work per MX
POLICY_PATH = "/.well-known/mta-sts.txt"
VERSION = "STSv1"

_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")  # no ';', no '=', no spaces
_KEY = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_MAX_AGE = re.compile(r"[0-9]{1,10}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class InvalidPolicy(ValueError):
    """A TXT record or policy file that breaks RFC 8461's grammar: no policy."""


class STSMode(enum.StrEnum):
    """What a domain's policy asks of senders (section 5)."""

    ENFORCE = "enforce"  # a verified TLS session to a listed MX, or no delivery
    TESTING = "testing"  # deliver as without a policy; report what would have failed
    NONE = "none"  # the domain withdrew its policy: as without one


@dataclass(frozen=True)
class STSRecord:
    """The `_mta-sts` TXT record: its id changes whenever the policy does."""

    id: str


@dataclass(frozen=True)
class Policy:
    mode: STSMode
    max_age_seconds: int
    mx: tuple[str, ...]  # lower-case patterns, `*.` wildcards kept

    def allows(self, mx_host: str) -> bool:
        """Whether `mx_host` matches one of the policy's `mx` patterns."""
        return any(mx_matches(p, mx_host) for p in self.mx)


def parse_record(texts: Sequence[str]) -> STSRecord | None:
    """The STSv1 record among a name's TXT strings (each already joined from
    its character-strings); None when there is none; InvalidPolicy when there
    are several or the one found breaks the grammar (both mean no policy)."""
    candidates = [t for t in texts if t.startswith("v=STSv1;") or t == "v=STSv1"]
    if not candidates:
        return None
    if len(candidates) > 1:
        raise InvalidPolicy(f"{len(candidates)} STSv1 TXT records, section 3.1 wants one")
    fields = [f.strip(" \t") for f in candidates[0].split(";")]
    if fields and fields[-1] == "":
        fields.pop()  # one trailing delimiter is allowed
    record_id = None
    for field in fields[1:]:
        key, eq, value = field.partition("=")
        if not eq or not _EXT_NAME.fullmatch(key) or not _EXT_VALUE.fullmatch(value):
            raise InvalidPolicy(f"malformed TXT field {field[:40]!r}")
        if key == "id":
            if record_id is not None:
                raise InvalidPolicy("two id fields in the TXT record")
            if not _ID.fullmatch(value):
                raise InvalidPolicy("TXT id must be 1 to 32 letters or digits")
            record_id = value
    if record_id is None:
        raise InvalidPolicy("TXT record without id")
    return STSRecord(record_id)


def parse_policy(body: bytes) -> Policy:
    """The policy of a fetched `mta-sts.txt` body (CRLF or LF lines); InvalidPolicy
    naming the first problem."""
    if len(body) > MAX_POLICY_BYTES:
        raise InvalidPolicy(f"policy larger than {MAX_POLICY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPolicy("policy is not UTF-8 text") from None
    single: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.split("\n"):
        line = raw.removesuffix("\r").rstrip(" \t")
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon or not _KEY.fullmatch(key):
            raise InvalidPolicy(f"malformed policy line {line[:40]!r}")
        value = value.strip(" \t")
        if key == "mx":
            if len(mx) >= MAX_MX_PATTERNS:
                raise InvalidPolicy(f"more than {MAX_MX_PATTERNS} mx patterns")
            mx.append(_mx_pattern(value))
        elif key in ("version", "mode", "max_age"):
            if key in single:
                raise InvalidPolicy(f"{key} given twice")
            single[key] = value
        # other keys: extensions, ignored (section 3.2)
    if single.get("version") != VERSION:
        raise InvalidPolicy(f"version must be {VERSION}")
    try:
        mode = STSMode(single.get("mode", ""))
    except ValueError:
        raise InvalidPolicy("mode must be enforce, testing or none") from None
    max_age = single.get("max_age", "")
    if not _MAX_AGE.fullmatch(max_age):
        raise InvalidPolicy("max_age must be 1 to 10 digits")
    if not mx and mode is not STSMode.NONE:
        raise InvalidPolicy(f"mode {mode} without any mx pattern")
    return Policy(mode, min(int(max_age), MAX_AGE_LIMIT_SECONDS), tuple(mx))


def _mx_pattern(value: str) -> str:
    """A lower-case `mx` pattern: a host name, optionally `*.` and a host name."""
    name = value.lower().rstrip(".")
    host = name.removeprefix("*.")
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidPolicy(f"mx pattern {value[:40]!r} is not a host name or *.host name")
    return name


def mx_matches(pattern: str, mx_host: str) -> bool:
    """Section 4.1: exact (case-insensitive, trailing dot ignored), or `*.rest`
    matching a host that is exactly one label followed by `.rest`."""
    host = mx_host.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if not pattern.startswith("*."):
        return host == pattern
    first, dot, rest = host.partition(".")
    return bool(first) and bool(dot) and rest == pattern[2:]


@dataclass(frozen=True)
class Cached:
    """A policy as fetched for a TXT id, valid until `expires` (monotonic seconds)."""

    record_id: str
    policy: Policy
    expires: float

    def valid(self, now: float) -> bool:
        return now < self.expires


class Step(enum.Enum):
    """What the fetcher does next for a domain."""

    USE_CACHED = "use-cached"  # the cached policy is current
    FETCH = "fetch"  # a new or changed policy: fetch it (falling back to the cache)
    NO_POLICY = "no-policy"  # nothing published and nothing cached


def next_step(cached: Cached | None, record: STSRecord | None, now: float) -> Step:
    """Section 5.1: the cached policy answers while it is valid and its id is the
    published one; a new id (or an expired policy still published) is fetched;
    a missing TXT record does not withdraw a valid cached policy (an attacker
    could remove it, and `mode: none` is how a domain withdraws)."""
    current = cached is not None and cached.valid(now)
    if record is None:
        return Step.USE_CACHED if current else Step.NO_POLICY
    if current and cached is not None and cached.record_id == record.id:
        return Step.USE_CACHED
    return Step.FETCH


def fetched(record: STSRecord, policy: Policy, now: float) -> Cached:
    return Cached(record.id, policy, now + policy.max_age_seconds)


def sts_plan(policy: Policy | None) -> TLSPlan:
    """The TLS plan of a destination under pool mode `mta-sts` (section 5): verify
    and never clear where the policy enforces; check and report, then go on
    unverified, where it is testing; opportunistic with no policy or `none`."""
    if policy is not None and policy.mode is STSMode.ENFORCE:
        return TLSPlan(TLSMode.MTA_STS, starttls=True, verify=True, clear_on_failure=False)
    if policy is not None and policy.mode is STSMode.TESTING:
        return TLSPlan(TLSMode.MTA_STS, starttls=True, verify=True, clear_on_failure=True)
    return TLSPlan(TLSMode.MTA_STS, starttls=True, verify=False, clear_on_failure=True)
