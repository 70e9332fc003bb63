"""Wire formats on Kafka: delivery records, disposition events, suppressions.

The relay, the operator (fan-out, status aggregation) and the inbound
receivers write and read them through this module only, so the two planes
cannot drift. Every format carries a `v` field; a reader refuses a
version it does not know (the record goes to the DLQ with that reason) rather
than guessing.

All models reject unknown keys and refuse CR/LF in anything that ends up in
an SMTP command or a header, because header injection through merge fields
or API input is the classic way a bulk sender gets abused.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from .errors import PermanentError
from .tls_outcome import TLSOutcome

WIRE_VERSION: Literal[1] = 1
MAX_ID_LENGTH = 200  # message ids end up in headers and logs; a longer one is a bug upstream
MAX_RECIPIENTS = 1000  # per record: one SMTP transaction (RFC 5321 4.5.3.1.8 needs 100)
MAX_REPLY_LENGTH = 2000  # an SMTP reply kept in an event; the relay truncates longer ones
MAX_BOUNCE_CLASS_LENGTH = 64  # a class name, not a sentence


class WireError(PermanentError, ValueError):
    """A Kafka value that cannot be decoded into a known wire format."""


def _no_crlf(value: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError("must not contain CR, LF or NUL (header injection)")
    return value


def _address(value: str) -> str:
    _no_crlf(value)
    local, sep, domain = value.rpartition("@")
    if not sep or not local or not domain or " " in value or "<" in value or ">" in value:
        raise ValueError(f"not a plain mailbox address: {value!r}")
    return value


SafeStr = Annotated[str, AfterValidator(_no_crlf)]
Address = Annotated[str, AfterValidator(_address)]

# Unix seconds up to 2100-01-01: later than any real schedule or retry, and far
# below the floats (1e308, Infinity) that would park a record forever.
MAX_UNIX_SECONDS = 4_102_444_800
# Strict: the wire is JSON written by programs, so `"3"`, `true` or `NaN` where a
# number belongs is a producer bug to refuse, never a value to coerce.
UnixSeconds = Annotated[float, Field(strict=True, ge=0, le=MAX_UNIX_SECONDS, allow_inf_nan=False)]
Count = Annotated[int, Field(strict=True, ge=0)]


def domain_of(address: str) -> str:
    """Lower-cased domain part of an address: the unit of throttling and routing."""
    return address.rpartition("@")[2].lower()


def suppression_key(address: str, list_name: str | None = None) -> str:
    """Key of an address on a suppression topic: the whole address, lower-cased;
    for a suppression of one mailing list only, the address and ` list=<list>`
    (an address never holds a space, so the two kinds of key cannot collide and a
    list's entry never overwrites or lifts the namespace's for the same address)."""
    key = address.strip().lower()
    return key if list_name is None else f"{key} list={list_name}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Recipient(_Model):
    address: Address
    merge: dict[str, SafeStr] = Field(
        default_factory=dict, description="per-recipient merge fields, already validated"
    )


class Content(_Model):
    """A structured message the relay turns into MIME (email.message.EmailMessage)."""

    subject: SafeStr
    text: str | None = None
    html: str | None = None
    headers: list[tuple[SafeStr, SafeStr]] = Field(
        default_factory=list, description="extra headers, in order; names and values CR/LF-free"
    )
    from_name: SafeStr | None = None
    reply_to: Address | None = None

    @model_validator(mode="after")
    def _has_body(self) -> Content:
        if self.text is None and self.html is None:
            raise ValueError("content needs a text or an html body")
        for name, _ in self.headers:
            if not name or ":" in name or " " in name:
                raise ValueError(f"invalid header name {name!r}")
        return self


class ListUnsubscribe(_Model):
    """RFC 2369 List-Unsubscribe, with RFC 8058 one-click when `one_click`.

    `endpoint`: the URL is the pool's own one-click endpoint, with a token the
    relay signs for the one recipient at send time (mailpipe.inbound.unsubscribe);
    `list`: what that unsubscribe suppresses, one mailing list (absent: the whole
    namespace)."""

    url: SafeStr | None = None
    mailto: Address | None = None
    one_click: bool = True
    endpoint: bool = False
    list: SafeStr | None = Field(default=None, max_length=63)

    @model_validator(mode="after")
    def _has_target(self) -> ListUnsubscribe:
        if self.endpoint and self.url is not None:
            raise ValueError("list_unsubscribe: a url of its own or the pool's endpoint, not both")
        if self.url is None and self.mailto is None and not self.endpoint:
            raise ValueError("list_unsubscribe needs a url, a mailto or the pool's endpoint")
        if (
            self.one_click
            and not self.endpoint
            and (self.url is None or not self.url.startswith("https://"))
        ):
            raise ValueError("one-click unsubscribe (RFC 8058) needs an https url")
        return self


class DeliveryRecord(_Model):
    """One message to one or more recipients of one domain (value on `<pool>.outbound`)."""

    v: Literal[1] = WIRE_VERSION
    id: SafeStr = Field(min_length=1, max_length=MAX_ID_LENGTH, description="unique message id")
    campaign: SafeStr | None = Field(default=None, description="'namespace/name' of the Campaign")
    variant: SafeStr | None = None
    sender: Address = Field(description="envelope MAIL FROM and default From: address")
    recipients: list[Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    content: Content | None = None
    raw: str | None = Field(
        default=None, description="a complete RFC 5322 message (submission endpoint)"
    )
    list_unsubscribe: ListUnsubscribe | None = None
    created_at: UnixSeconds = Field(
        description="unix seconds; retries expire at created_at + max age"
    )
    not_before: UnixSeconds | None = Field(
        default=None, description="unix seconds; not sent earlier"
    )
    attempt: Count = Field(default=0, description="deliveries tried so far")

    @model_validator(mode="after")
    def _check(self) -> DeliveryRecord:
        if (self.content is None) == (self.raw is None):
            raise ValueError("exactly one of content and raw is required")
        domains = {domain_of(r.address) for r in self.recipients}
        if len(domains) != 1:
            raise ValueError(f"all recipients must share one domain, got {sorted(domains)}")
        return self

    @property
    def domain(self) -> str:
        return domain_of(self.recipients[0].address)


class Disposition(enum.StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"  # by an unsubscribe (one-click or mailto): not an attempt's
    SUPPRESSED = "suppressed"
    EXPIRED = "expired"
    FAILED = "failed"


class FeedbackReason(enum.StrEnum):
    """The `reason` of an event that came back after the send, in the words its
    writer puts there and `kubectl mailpipe fate` reads back: written here once,
    so the feedback receiver, the one-click endpoint and the plugin cannot drift.

    A complaint's reason carries the report's feedback type after a colon
    (`complaint:abuse`, made by `COMPLAINT.complaint(type)`); `of` reads any
    reason back. The relay's
    own reasons (a suppressed record's `complaint`, a retry's cause) are none of
    these: `of` gives None for them."""

    ASYNC_BOUNCE = "async_bounce"  # a DSN (or a free-text bounce) saying failed
    ASYNC_DELAY = "async_delay"  # a DSN saying delivery is still being tried
    COMPLAINT = "complaint"  # an ARF report of type abuse: written `complaint:<type>`
    ONE_CLICK = "one-click"  # the RFC 8058 POST to the unsubscribe endpoint
    MAILTO = "mailto"  # a mail to the List-Unsubscribe mailto (the feedback receiver)

    def complaint(self, feedback_type: str) -> str:
        """The reason of a complaint of `feedback_type` (only for COMPLAINT)."""
        assert self is FeedbackReason.COMPLAINT
        return f"{self.value}:{feedback_type}"

    @classmethod
    def of(cls, reason: str | None) -> FeedbackReason | None:
        """The word of an event's `reason`, or None when no feedback writer wrote it."""
        if reason is None:
            return None
        if reason.startswith(f"{cls.COMPLAINT.value}:"):
            return cls.COMPLAINT
        if reason == cls.COMPLAINT.value:
            return None  # the relay's: a record skipped for a complaint suppression
        try:
            return cls(reason)
        except ValueError:
            return None

    @property
    def is_unsubscribe(self) -> bool:
        return self in (FeedbackReason.ONE_CLICK, FeedbackReason.MAILTO)


class Event(_Model):
    """One disposition of one recipient attempt (value on `<pool>.events`)."""

    v: Literal[1] = WIRE_VERSION
    message_id: str
    campaign: str | None = None
    variant: str | None = None
    recipient: str
    domain: str
    disposition: Disposition
    time: UnixSeconds = Field(description="unix seconds")
    attempt: Count = 0
    egress_ip: str | None = None
    mx_host: str | None = None
    smtp_code: int | None = None
    enhanced_code: str | None = None
    reply: str | None = Field(default=None, max_length=MAX_REPLY_LENGTH)
    reason: str | None = Field(default=None, description="short machine-readable cause")
    # Optional and left out when unset (`encode` drops None), so events written
    # before it existed still decode.
    bounce_class: str | None = Field(
        default=None,
        max_length=MAX_BOUNCE_CLASS_LENGTH,
        description="what a bounce or deferral was about (contracts.bounces.BounceClass)",
    )
    relay: str | None = Field(default=None, description="id of the relay process that sent")
    tls: TLSOutcome | None = Field(
        default=None, description="the TLS of this attempt: mode, protocol, verified or why not"
    )
    # Not derivable from `mx_host` on replay: a site joins the providers of every
    # MX host of the domain (and a group or override outranks them), as the
    # relay that delivered knew them.
    site: str | None = Field(
        default=None,
        description="the site the attempt was shaped and warm-up counted under (contracts.sites);"
        " absent in older events: the site the config names for `domain`",
    )


class SuppressionReason(enum.StrEnum):
    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    MANUAL = "manual"


class Suppression(_Model):
    """Value on a compacted suppression topic (a namespace's, a routed pool's or
    the never-mail list); a tombstone lifts it."""

    v: Literal[1] = WIRE_VERSION
    address: str
    reason: SuppressionReason
    time: UnixSeconds
    source: str | None = Field(default=None, description="pool, campaign or receiver that said so")
    detail: str | None = None
    list: str | None = Field(
        default=None,
        max_length=63,
        description="the mailing list it applies to (its key: `suppression_key(address, list)`);"
        " absent: every mail of the topic's scope",
    )


class CampaignState(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"


class CampaignControl(_Model):
    """Value on a namespace's compacted campaign-control topic, keyed by 'namespace/name'.

    The operator publishes it when a Campaign is suspended, resumed or deleted,
    so relays hold back or drop records that are already on Kafka.
    """

    v: Literal[1] = WIRE_VERSION
    campaign: str
    state: CampaignState
    time: UnixSeconds


def encode(model: BaseModel) -> bytes:
    """Compact JSON, the one encoding of every wire value."""
    return model.model_dump_json(exclude_none=True).encode()


M = TypeVar("M", bound=BaseModel)


def _decode(cls: type[M], data: bytes) -> M:
    """Any bytes in, a valid model or a WireError with the reason out: never another
    exception, because one that escapes stops a whole pool (ARCHITECTURE.md, "Bad input gets a
    clear error")."""
    # Fast path: pydantic parses and validates in one pass (no dict in between).
    try:
        model = cls.model_validate_json(data)
    except ValidationError:
        pass  # the slow path below finds the precise reason
    else:
        if "v" not in model.model_fields_set:
            raise WireError(f"no wire version 'v', this relay reads v{WIRE_VERSION}")
        return model
    try:
        obj: Any = json.loads(data)
    except RecursionError as exc:
        raise WireError("not JSON: nested too deeply") from exc
    except ValueError as exc:  # JSON syntax, bad UTF-8, integers past Python's digit limit
        raise WireError(f"not JSON: {str(exc)[:200]}") from exc
    if not isinstance(obj, dict):
        raise WireError("not a JSON object")
    if type(obj.get("v")) is not int or obj["v"] != WIRE_VERSION:
        raise WireError(f"unknown wire version {obj.get('v')!r}, this relay reads v{WIRE_VERSION}")
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        raise WireError(_describe(exc)) from exc
    except (ValueError, RecursionError) as exc:  # a validator choking on a hostile value
        raise WireError(f"invalid: {type(exc).__name__}: {str(exc)[:200]}") from exc


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<record>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def decode_record(data: bytes) -> DeliveryRecord:
    return _decode(DeliveryRecord, data)


def decode_event(data: bytes) -> Event:
    return _decode(Event, data)


def decode_suppression(data: bytes) -> Suppression:
    return _decode(Suppression, data)


def decode_control(data: bytes) -> CampaignControl:
    return _decode(CampaignControl, data)
