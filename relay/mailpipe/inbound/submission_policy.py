"""What the submission endpoint decides, with no IO: who may log in, which
senders a user may use, how fast, how big, and what an accepted message
becomes on Kafka.

Pure so that every refusal and its SMTP code is a table test
(tests/inbound/unit/test_submission_policy.py); the SMTP server
(`submission`) and the Kafka outbox (`submission_kafka`) only carry these
decisions out.

Passwords are stored as scrypt hashes (`hashlib.scrypt`, RFC 7914): a
memory-hard KDF in the standard library, so no extra dependency for the one
thing the endpoint must get right, and the cost parameters travel in the
stored string, so they can be raised later without breaking old hashes.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from email.headerregistry import Address as HeaderAddress
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from typing import NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mailpipe.contracts import submission_users
from mailpipe.contracts.config import KafkaSettings
from mailpipe.contracts.submission_users import (
    HASH_SCHEME,
    SCRYPT_MAXMEM,
    SubmissionUser,
    parse_hash,
)
from mailpipe.contracts.wire import (
    MAX_RECIPIENTS,
    DeliveryRecord,
    Recipient,
    WireError,
    domain_of,
)

# scrypt cost: N=2^14, r=8 is RFC 7914's interactive setting (16 MiB, tens of
# milliseconds); run off the event loop by the server.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32

RATE_WINDOW_SECONDS = 60.0  # messages_per_minute counts MAIL FROMs accepted in a sliding minute
# A message travels inside a Kafka record (JSON, one per recipient domain), and
# Kafka's default limit on a record batch is 1 MiB (broker message.max.bytes,
# producer max.request.size). The default stays under it with room for the
# JSON; a pool that wants larger mail raises both and this together.
KAFKA_DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 768 * 1024
ID_HASH_CHARS = 32  # 128 bits of SHA-256: collisions are not a concern


class Reply(NamedTuple):
    """One SMTP reply: code and text (with its RFC 3463 enhanced code)."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class Replies:
    """Every reply the endpoint chooses itself (aiosmtpd's own for the protocol)."""

    ACCEPTED = Reply(250, "2.0.0 OK: queued as {id}")
    DUPLICATE = Reply(250, "2.0.0 OK: already queued as {id}")
    AUTH_FAILED = Reply(535, "5.7.8 Authentication credentials invalid")
    AUTH_REQUIRED = Reply(530, "5.7.0 Authentication required")
    SENDER_FORBIDDEN = Reply(553, "5.7.1 <{address}>: sender domain not allowed for user {user}")
    FROM_FORBIDDEN = Reply(550, "5.7.1 From: header domain {domain} not allowed for user {user}")
    FROM_MISSING = Reply(550, "5.6.0 the message has no valid From: header")
    BAD_ADDRESS = Reply(501, "5.1.3 <{address}>: not a valid mailbox address")
    TOO_MANY_RECIPIENTS = Reply(452, "4.5.3 too many recipients (at most {limit} per message)")
    SUPPRESSED = Reply(550, "5.7.1 <{address}>: recipient is suppressed ({reason})")
    RATE_LIMITED = Reply(450, "4.7.1 message rate of user {user} exceeded, try again later")
    TOO_BIG = Reply(552, "5.3.4 message too big for system (at most {limit} bytes)")
    TOO_BIG_ENCODED = Reply(552, "5.3.4 message too big for the queue once encoded ({size} bytes)")
    NOT_UTF8 = Reply(554, "5.6.0 message is not UTF-8: send 8-bit parts base64 or QP encoded")
    UNAVAILABLE = Reply(451, "4.3.0 queue unavailable, nothing was accepted: try again later")


class SuppressedRecipients(enum.StrEnum):
    """What a suppressed recipient gets, as the pool says."""

    REFUSE = "refuse"  # 550 5.7.1 at RCPT, with the reason: the application learns it
    DROP = "drop"  # accepted and silently not sent: the application cannot probe the list


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubmissionConfigError(ValueError):
    """The config or users file cannot be used; the message says which entry and why."""


def parse_users(text: str) -> dict[str, SubmissionUser]:
    """The users file (YAML: user name -> SubmissionUser), validated whole
    (`contracts.submission_users`: the operator checks the Secret with it too)."""
    try:
        return submission_users.parse_users(text)
    except submission_users.UsersFileError as exc:
        raise SubmissionConfigError(str(exc)) from exc


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$hash` (base64): the costs travel with the hash."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password.encode(), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    encoded = [base64.b64encode(b).decode() for b in (salt, digest)]
    return "$".join([HASH_SCHEME, str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), *encoded])


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=HASH_BYTES
    )


# Checked against when the user is unknown, so an unknown name costs the same
# time as a wrong password and user names cannot be probed by timing.
_DUMMY_HASH = hash_password("", salt=b"\0" * SALT_BYTES)


def check_login(
    users: dict[str, SubmissionUser], login: bytes, password: bytes
) -> tuple[str, SubmissionUser] | None:
    """The user whose credentials these are, else None. Slow on purpose (scrypt):
    call it off the event loop."""
    name = login.decode("utf-8", "replace")
    user = users.get(name)
    parsed = parse_hash(user.password_hash if user else _DUMMY_HASH) or parse_hash(_DUMMY_HASH)
    assert parsed is not None
    n, r, p, salt, digest = parsed
    ok = hmac.compare_digest(_scrypt(password, salt, n, r, p), digest)
    return (name, user) if ok and user is not None else None


def address_domain_allowed(user: SubmissionUser, address: str) -> bool:
    """An address whose domain is one of the user's (exact, case-insensitive): a
    subdomain needs its own entry, so a user cannot send as any host under it."""
    local, sep, domain = address.rpartition("@")
    if not sep or not local:
        return False
    return domain.lower() in {d.lower() for d in user.sender_domains}


def header_from_domains(raw: bytes) -> list[str] | None:
    """Domains of the From: header's addresses; None when there is no usable From:
    (missing, repeated, unparsable or empty), which RFC 5322 3.6 forbids."""
    headers = BytesHeaderParser(policy=SMTP_POLICY).parsebytes(raw)
    values = headers.get_all("From") or []
    if len(values) != 1:
        return None
    try:
        addresses: Sequence[HeaderAddress] = values[0].addresses
    except (AttributeError, ValueError, IndexError):
        return None
    domains = [a.domain.lower() for a in addresses if a.domain]
    return domains if domains and len(domains) == len(addresses) else None


def message_key(raw: bytes) -> str:
    """What stays the same when a client sends the same message again: its
    Message-ID, else the bytes themselves."""
    headers = BytesHeaderParser(policy=SMTP_POLICY).parsebytes(raw)
    mid = headers.get("Message-ID")
    if mid is not None and str(mid).strip():
        return "mid:" + str(mid).strip()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def submission_id(user: str, sender: str, recipients: Iterable[str], key: str) -> str:
    """A deterministic id of one submission, so a client's retry after a lost 250
    (or after a 451 whose transaction did commit) is recognised: the same user,
    envelope and message give the same id."""
    material = "\0".join([user, sender.lower(), *sorted(r.lower() for r in recipients), key])
    return "sub-" + hashlib.sha256(material.encode()).hexdigest()[:ID_HASH_CHARS]


def build_records(
    sid: str, sender: str, recipients: Sequence[str], raw: str, now: float
) -> list[DeliveryRecord]:
    """One record per recipient domain (the relay's unit of routing and
    throttling), ids `<sid>.<n>` in domain order: deterministic, so a retry
    builds exactly the same records."""
    by_domain: dict[str, list[str]] = {}
    for rcpt in recipients:
        by_domain.setdefault(domain_of(rcpt), []).append(rcpt)
    return [
        DeliveryRecord(
            id=f"{sid}.{n}",
            sender=sender,
            recipients=[Recipient(address=a) for a in by_domain[domain]],
            raw=raw,
            created_at=now,
        )
        for n, domain in enumerate(sorted(by_domain))
    ]


def valid_address(address: str) -> bool:
    """An address the wire format accepts as a recipient or sender."""
    try:
        Recipient(address=address)
    except (ValidationError, WireError):
        return False
    return True


class RateLimiter:
    """Accepted messages per user in a sliding window (`RATE_WINDOW_SECONDS`).

    `allows` at MAIL FROM, `count` once the message is accepted: a refused or
    failed message costs nothing. Per process: with several replicas a user's
    limit is per replica (the Service spreads connections)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._times: dict[str, deque[float]] = {}

    def allows(self, user: str, per_minute: int) -> bool:
        times = self._times.get(user)
        if times is None:
            return True
        horizon = self._clock() - RATE_WINDOW_SECONDS
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._times[user]
            return True
        return len(times) < per_minute

    def count(self, user: str) -> None:
        self._times.setdefault(user, deque()).append(self._clock())


MAX_RECIPIENTS_PER_MESSAGE = MAX_RECIPIENTS  # one record's bound; more domains, more records


class Listener(_Model):
    address: str = "0.0.0.0"  # a Service fronts it in a cluster
    port: int = Field(ge=0, le=65535, description="0 = an ephemeral port (tests)")


class SubmissionConfig(_Model):
    """`mailpipe submission --config`: the pool's endpoint, rendered from its spec."""

    pool: str = Field(description="'namespace/name' of the SendingPool")
    kafka: KafkaSettings = Field(description="the pool's topics and login (the relay's settings)")
    ledger_topic: str | None = Field(
        default=None,
        description="compacted topic of accepted submission ids (default <prefix>.submitted)",
    )
    transactional_id: str = Field(
        default="mailpipe-submission",
        description="Kafka transactional id; unique per replica (the pod name)",
    )
    hostname: str = Field(description="name in the greeting and on the TLS certificate")
    starttls: Listener | None = Field(default_factory=lambda: Listener(port=587))
    implicit_tls: Listener | None = Field(default_factory=lambda: Listener(port=465))
    tls_cert_file: str = Field(description="PEM chain, mounted from the TLS Secret")
    tls_key_file: str
    users_file: str = Field(description="users YAML (hashed passwords), mounted from a Secret")
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024, description="SIZE and DATA limit (552 5.3.4)"
    )
    max_record_bytes: int = Field(
        default=KAFKA_DEFAULT_MAX_RECORD_BYTES,
        ge=1024,
        description="largest record the pool's topics take (their max.message.bytes)",
    )
    suppressed_recipients: SuppressedRecipients = SuppressedRecipients.REFUSE
    kafka_deadline_seconds: float = Field(
        default=10.0, gt=0, le=60, description="longest wait for Kafka before 451 4.3.0"
    )
    metrics_address: str = "0.0.0.0"
    metrics_port: int = Field(default=9091, ge=0, le=65535)

    @property
    def ledger(self) -> str:
        if self.ledger_topic:
            return self.ledger_topic
        outbound = self.kafka.outbound_topic
        prefix = outbound.removesuffix(".outbound")
        return f"{prefix}.submitted"


def parse_submission_config(text: str) -> SubmissionConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SubmissionConfigError(f"submission config is not valid YAML: {exc}") from exc
    try:
        return SubmissionConfig.model_validate(data)
    except ValidationError as exc:
        msgs = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<config>'}: {e['msg']}" for e in exc.errors()
        )
        raise SubmissionConfigError(f"invalid submission config: {msgs}") from exc
