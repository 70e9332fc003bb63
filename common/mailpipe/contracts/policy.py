"""A pool's delivery policy: the types the SendingPool spec and the relay config share.

Egress IPs, warm-up steps, throttles, retries, TLS, DKIM identity and static
routes are defined once, here, with the constraints the CRD schema publishes.
The operator's spec (`mailpipe.operator.models`) and the relay config
(`config`) are built from these very classes, so the operator hands the
relay the objects it parsed instead of copying them field by field, and a
value the apiserver accepts is one the relay accepts.

Field names are snake_case in Python and camelCase in a custom resource
(Kubernetes API conventions); the relay config file uses the snake_case
names, and both are accepted when parsing (`populate_by_name`).

Classes used as spec fields carry comments, not docstrings: a docstring would
become (or reorder) their description in the generated CRD.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from typing import Annotated, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .wire import MAX_RECIPIENTS

HOSTNAME = (
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = rf"^({_OCTET}\.){{3}}{_OCTET}$"
# Every IANA name (Europe/Paris, CET, EST5EDT, Etc/GMT+5, America/Argentina/Buenos_Aires),
# issue 12; tests/operator/unit/test_audience.py tries every name zoneinfo knows.
TIME_ZONE = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$"

MAX_HOSTNAME = 253  # RFC 1035 2.3.4: a domain name in text form
MAX_WARMUP_DAY = 365  # a schedule longer than a year is a typo, not a plan
MAX_WARMUP_STEPS = 60  # daily steps for two months; also bounds the CRD's CEL cost
MAX_CONNECTIONS = 1000  # per destination, pool-wide: far beyond what any MX tolerates
MAX_RECIPIENTS_PER_TRANSACTION = MAX_RECIPIENTS  # a transaction carries at most one record's
# Connection reuse, per destination; the defaults are Postfix's (see `Throttle`).
DEFAULT_CONNECTION_IDLE_SECONDS = 2.0  # smtp_connection_cache_time_limit
DEFAULT_CONNECTION_MAX_AGE_SECONDS = 300.0  # smtp_connection_reuse_time_limit
MAX_CONNECTION_IDLE_SECONDS = 300.0  # RFC 5321 4.5.3.2.7: a server may close a session idle 5 min
MAX_CONNECTION_MAX_AGE_SECONDS = 3600.0  # an hour-old session is a forgotten one, not a policy
MAX_RETRY_STEPS = 20  # a schedule, not a list of every attempt: its last step repeats
MIN_MAX_AGE_SECONDS = 60  # expiring sooner than the first retry could run is a mistake
# Domain groups a pool shapes separately (and sites a warm-up step caps): a handful
# in practice (gmail, microsoft, yahoo, ...); the bound also keeps the CRD's CEL
# rule on groupLimits within budget.
MAX_DOMAIN_GROUPS = 32
# TLS overrides per site (domain or group): a pool names a few dozen partners at most;
# the bound keeps the CRD's CEL rules over `tls.sites` within the apiserver's budget.
MAX_TLS_SITES = 256


def _known_zone(name: str) -> str:
    # The pattern is all the apiserver can check; the relay needs the zone to exist.
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc
    return name


TimeZone = Annotated[str, StringConstraints(pattern=TIME_ZONE), AfterValidator(_known_zone)]


class Spec(BaseModel):
    """Base of every spec type: unknown keys refused, immutable, camelCase aliases."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


# An egress IP: the source address relays bind and the name they greet with.
class EgressIP(Spec):
    address: str = Field(pattern=IPV4, description="IPv4 source address the relays bind to.")
    helo: str = Field(
        pattern=HOSTNAME,
        max_length=MAX_HOSTNAME,
        description="EHLO name; should match the IP's PTR record.",
    )
    warmup: bool = Field(
        default=False, description="True while this IP follows the warm-up schedule."
    )
    warmup_day_offset: int = Field(
        default=0,
        ge=0,
        le=MAX_WARMUP_DAY,
        description="Warm-up days already done elsewhere (skips steps).",
    )


# One step of a warm-up schedule: the daily caps from `day` on.
class WarmupStep(Spec):
    day: int = Field(
        ge=1, le=MAX_WARMUP_DAY, description="Warm-up day this cap starts on (1 = first day sent)."
    )
    daily_limit: int = Field(ge=0, description="Messages per day from the IP, all destinations.")
    group_limits: dict[str, NonNegativeInt] = Field(
        default_factory=dict,
        max_length=MAX_DOMAIN_GROUPS,
        description="Messages per day from the IP per site: a domain group, or a site "
        "named by its MX hosts' provider (google.com) or a domain with its own throttle.",
    )


class WarmupPolicy(Spec):
    """The schedule and safeguards of warming IPs (both planes; each adds its time zone)."""

    schedule: list[WarmupStep] = Field(
        default_factory=list,
        max_length=MAX_WARMUP_STEPS,
        description="Daily caps for warming IPs, by day.",
    )
    bounce_rate_pause: float = Field(
        default=0.10,
        ge=0,
        le=1,
        description="Pause a warming IP when its bounce rate exceeds this.",
    )
    complaint_rate_pause: float = Field(
        default=0.003, ge=0, le=1, description="Pause a warming IP above this complaint rate."
    )
    min_sample: int = Field(default=200, ge=1, description="Messages before rates are judged.")

    @model_validator(mode="after")
    def _monotonic(self) -> Self:
        # The CRD says the same with CEL rules; this refuses it in the relay config too.
        days = [s.day for s in self.schedule]
        if days != sorted(set(days)):
            raise ValueError("warmup.schedule days must be strictly increasing")
        limits = [s.daily_limit for s in self.schedule]
        if limits != sorted(limits):
            raise ValueError("warmup.schedule daily_limit must be non-decreasing")
        return self

    def step_for(self, day: int) -> WarmupStep | None:
        """The cap in force on warm-up `day`; None past the schedule (fully warm)."""
        current: WarmupStep | None = None
        for step in self.schedule:
            if step.day <= day:
                current = step
        if self.schedule and day > self.schedule[-1].day:
            return None
        return current


# Shaping of one destination (a domain or a domain group), pool-wide.
class Throttle(Spec):
    max_connections: int = Field(
        default=10, ge=1, le=MAX_CONNECTIONS, description="Concurrent connections."
    )
    messages_per_minute: float | None = Field(
        default=None, gt=0, description="Message rate, pool-wide. Unset means unlimited."
    )
    messages_per_connection: int = Field(
        default=100, ge=1, description="Messages before a connection is closed and reopened."
    )
    recipients_per_transaction: int = Field(
        default=50, ge=1, le=MAX_RECIPIENTS_PER_TRANSACTION, description="RCPTs per DATA."
    )
    # Postfix's smtp_connection_cache_time_limit: receivers close idle sessions
    # soon, and an idle session holds one of their process slots.
    connection_idle_seconds: float = Field(
        default=DEFAULT_CONNECTION_IDLE_SECONDS,
        gt=0,
        le=MAX_CONNECTION_IDLE_SECONDS,
        description="Seconds a pooled connection may wait unused before it is closed with QUIT.",
    )
    # Postfix's smtp_connection_reuse_time_limit: a session never outlives a
    # receiver's configuration change (a new certificate, a new policy) by long.
    connection_max_age_seconds: float = Field(
        default=DEFAULT_CONNECTION_MAX_AGE_SECONDS,
        gt=0,
        le=MAX_CONNECTION_MAX_AGE_SECONDS,
        description="Seconds from connect after which a connection takes no new message"
        " and is closed with QUIT.",
    )


# When deferred mail is tried again, and when it expires.
class RetrySettings(Spec):
    schedule_seconds: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [60, 600, 3600, 21600],
        min_length=1,
        max_length=MAX_RETRY_STEPS,
        description="Wait before each retry of a deferred message; the last step repeats.",
    )
    max_age_seconds: int = Field(
        default=3 * 24 * 3600,  # three days, as most MTAs
        ge=MIN_MAX_AGE_SECONDS,
        description="Give up (expired) when a message is this old.",
    )

    def delay_for(self, attempt: int) -> int:
        """Seconds to wait before attempt `attempt + 1`."""
        steps = self.schedule_seconds
        return steps[min(max(attempt - 1, 0), len(steps) - 1)]


class TLSMode(enum.StrEnum):
    """STARTTLS policy towards MX hosts; each mode has one meaning (issue 22).

    `none`: never STARTTLS. `opportunistic`: encrypt when offered, never
    verify, deliver in clear when STARTTLS fails (RFC 3207 4.1; Postfix
    `may`). `verify`: the certificate must chain to a trusted CA and match the
    MX host name, else defer; never clear (Postfix `secure`). `required` with
    `verify: false`: encrypted, unverified, never clear (Postfix `encrypt`);
    `required` with `verify: true` is `verify`. `disabled` is the old name of
    `none`. Both older spellings stay accepted for existing pools. `dane`
    (RFC 7672; Postfix `dane`): DNSSEC-validated TLSA records of the MX host
    decide; the pool's resolver (`dnsNameserver`) must validate, its AD bit
    is trusted; without usable records it falls back as the RFC says
    (`relay.delivery.dane`).
    `mta-sts`: the destination's MTA-STS policy (RFC 8461) decides, `verify`
    restricted to its MX hosts where it says `enforce`, `opportunistic`
    (reporting what `enforce` would refuse) where it says `testing`, `none` or nothing.
    """

    NONE = "none"
    OPPORTUNISTIC = "opportunistic"
    VERIFY = "verify"
    REQUIRED = "required"
    DISABLED = "disabled"
    DANE = "dane"
    MTA_STS = "mta-sts"


# Modes that verify certificates at least for some destinations: a CA bundle is used.
VERIFYING_MODES = frozenset({TLSMode.VERIFY, TLSMode.MTA_STS})


def tls_problem(mode: TLSMode, verify: bool, ca_bundle: bool, where: str = "tls") -> str | None:
    """Why a TLS setting contradicts itself, naming the mode to use; None if it does not.

    `where` names the setting in the message: `tls` for the pool's, `tls.sites.<site>`
    for a site's override (the same rules hold for both).

    `verify: true` used to be accepted with `opportunistic`, which then fell
    back to clear text on a bad certificate: a policy that asks for
    verification must never end in clear, so that combination is refused,
    not reinterpreted (mail would start deferring without anyone asking)."""
    if verify and mode is TLSMode.DANE:
        return (
            f"{where}.verify: true contradicts mode dane (its TLSA records decide what is "
            "verified, and how); drop verify, or use mode: verify for CA-verified TLS"
        )
    if verify and mode in (TLSMode.OPPORTUNISTIC, TLSMode.NONE, TLSMode.DISABLED):
        return (
            f"{where}.verify: true contradicts mode {mode.value} (which never verifies); use "
            "mode: verify to require a certificate matching the MX name, or drop verify"
        )
    if verify and mode is TLSMode.MTA_STS:
        return (
            f"{where}.verify: true contradicts mode mta-sts (each destination's policy decides "
            "where to verify); use mode: verify to verify everywhere, or drop verify"
        )
    if ca_bundle and applied_tls_mode(mode, verify) not in VERIFYING_MODES:
        return (
            f"a TLS CA bundle is only used to verify certificates, and mode {mode.value} "
            f"{'with verify: false ' if mode is TLSMode.REQUIRED else ''}does not verify "
            "(nor does any of tls.sites); use mode: verify or mta-sts"
        )
    return None


def dane_resolver_problem(tls: TLSSettings, dns_nameserver: str | None) -> str | None:
    """Why a pool using mode dane (pool-wide or for a site) cannot work, naming the
    field; None if it can.

    DANE trusts the AD bit of the resolver's answers (as Postfix does), which
    means something only from a validating resolver the pool names: the pod's
    default resolver is rarely one, and a DANE pool whose answers never carry
    AD would silently be an opportunistic one."""
    if dns_nameserver is not None:
        return None
    where = [
        f"tls.sites.{name}.mode" for name, site in tls.sites.items() if site.applied is TLSMode.DANE
    ]
    if tls.applied is TLSMode.DANE:
        where.insert(0, "tls.mode")
    if where:
        return (
            f"{where[0]} dane trusts the AD bit of the pool's resolver: set dnsNameserver "
            "to a DNSSEC-validating resolver (host:port, e.g. a node-local unbound)"
        )
    return None


def tls_sites_problem(tls: TLSSettings, domain_groups: Collection[str]) -> str | None:
    """Why a site of `tls.sites` names nothing; None if each names a domain or a group.

    A site is a recipient domain (it has a dot) or a domain group: a name without
    a dot that no group defines is a typo whose override would never apply, and so
    is a domain in capitals (destinations are looked up in lower case)."""
    for name in tls.sites:
        if "." in name and name != name.lower():
            return f"tls.sites.{name}: write the domain in lower case ({name.lower()})"
        if "." not in name and name not in domain_groups:
            return (
                f"tls.sites.{name} names no domain group defined in domainGroups and is "
                "not a domain name: define the group, or write the recipient domain"
            )
    return None


def applied_tls_mode(mode: TLSMode, verify: bool) -> TLSMode:
    """The mode a setting means: `none`, `opportunistic`, `required` (encrypt,
    unverified) or `verify`; the older spellings mapped onto them."""
    if mode is TLSMode.DISABLED:
        return TLSMode.NONE
    if mode is TLSMode.REQUIRED and verify:
        return TLSMode.VERIFY
    return mode


# A site's STARTTLS policy: replaces the pool's for one recipient domain or domain group.
class TLSSite(Spec):
    mode: TLSMode = Field(
        description="STARTTLS policy for this site; the same modes as the pool's tls.mode."
    )
    verify: bool = Field(
        default=False,
        description="With mode required: verify MX certificates (the same as mode verify).",
    )

    @property
    def applied(self) -> TLSMode:
        """What this setting means, as one of none, opportunistic, required, verify."""
        return applied_tls_mode(self.mode, self.verify)


# STARTTLS policy towards MX hosts.
class TLSSettings(Spec):
    mode: TLSMode = Field(
        default=TLSMode.OPPORTUNISTIC,
        description=(
            "STARTTLS policy: none; opportunistic (encrypt if offered, never verify, clear "
            "if STARTTLS fails); verify (certificate must match the MX name, else defer, "
            "never clear); required (encrypt, unverified unless verify: true, never clear); "
            "dane (DNSSEC-validated TLSA records of each MX host decide, RFC 7672; needs "
            "dnsNameserver naming a validating resolver); mta-sts (the destination's RFC 8461 "
            "policy decides: verify where it enforces, else opportunistic); disabled (= none)."
        ),
    )
    verify: bool = Field(
        default=False,
        description=(
            "With mode required: verify MX certificates (the same as mode verify). "
            "Refused with none, opportunistic and mta-sts."
        ),
    )
    sites: dict[str, TLSSite] = Field(
        default_factory=dict,
        max_length=MAX_TLS_SITES,
        description=(
            "TLS policy per recipient domain or domain group name, replacing mode and "
            "verify above for it (as throttles.overrides: the domain's entry, else its "
            "group's, else the pool's)."
        ),
    )

    @property
    def applied(self) -> TLSMode:
        """What this setting means, as one of none, opportunistic, required, verify."""
        return applied_tls_mode(self.mode, self.verify)

    @property
    def applied_modes(self) -> frozenset[TLSMode]:
        """Every mode some destination may get: the pool's and its sites'."""
        return frozenset({self.applied, *(site.applied for site in self.sites.values())})

    def problem(self, ca_bundle: bool) -> str | None:
        """The first contradiction of the pool's setting or a site's (`tls_problem`).

        A CA bundle is refused only when no destination verifies: a pool that
        is opportunistic except for one site in mode verify uses it there."""
        problem = tls_problem(self.mode, self.verify, ca_bundle=False)
        for name, site in self.sites.items():
            problem = problem or tls_problem(
                site.mode, site.verify, ca_bundle=False, where=f"tls.sites.{name}"
            )
        if problem is None and ca_bundle and not self.applied_modes & VERIFYING_MODES:
            problem = tls_problem(self.mode, self.verify, ca_bundle=True)
        return problem

    @model_validator(mode="after")
    def _no_contradiction(self) -> Self:
        problem = self.problem(ca_bundle=False)
        if problem is not None:
            raise ValueError(problem)
        return self


class DKIMIdentity(Spec):
    """Who signs: d= and s=. Where the key comes from differs per plane."""

    domain: str = Field(pattern=HOSTNAME, description="Signing domain (d=).")
    selector: str = Field(pattern=r"^[A-Za-z0-9._-]+$", description="Selector (s=).")


# A static next hop that replaces MX lookup (tests, smart hosts).
class Route(Spec):
    host: str = Field(description="Host name or address to connect to.")
    port: int = Field(default=25, ge=1, le=65535, description="TCP port.")


def warmup_sites_problem(
    schedule: Sequence[WarmupStep], domain_groups: Collection[str]
) -> str | None:
    """Why a name in a step's groupLimits can never be a site; None if each can.

    A name is a site (`contracts.sites`): a domain group, or a dotted name (a
    domain with its own throttle, an MX provider such as `google.com`). A name
    without a dot that no group defines is a typo whose cap would never apply
    (the rule of `tls.sites`), and so is a dotted name in capitals (sites are
    named in lower case)."""
    for i, step in enumerate(schedule):
        for name in step.group_limits:
            where = f"warmup.schedule[{i}].groupLimits.{name}"
            if "." in name and name != name.lower():
                return f"{where}: write the site in lower case ({name.lower()})"
            if "." not in name and name not in domain_groups:
                return (
                    f"{where} names no domain group defined in domainGroups (unknown group) and "
                    "is not a site: define the group, or write a site such as google.com"
                )
    return None


def check_pool(
    egress: Sequence[EgressIP], domain_groups: Collection[str], schedule: Sequence[WarmupStep]
) -> None:
    """Rules across a pool's policy that no single field can check; ValueError names the rule.

    Both the SendingPool spec and the relay config run it, so a pool the
    operator accepts renders a relay config the relay accepts.
    """
    problem = warmup_sites_problem(schedule, domain_groups)
    if problem is not None:
        raise ValueError(problem)
    if len({e.address for e in egress}) != len(egress):
        raise ValueError("egress addresses must be unique")
