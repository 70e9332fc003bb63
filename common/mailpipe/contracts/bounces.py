"""Bounce classes as data: what a refusal was about, and whether it suppresses.

One classifier for every reply that did not deliver (the relay's own SMTP
replies today, DSNs later): an ordered list of rules, each matching on the
reply code, the RFC 3463 enhanced status code, the SMTP stage and a text
pattern; the first rule that matches gives the class (as KumoMTA's bounce
classifier, whose vocabulary the classes borrow). The defaults ship as data in
`bounce_rules.yaml`; a SendingPool's `bounces.rules` are tried before them, so
a platform team teaches a pool a receiver's wording without a release.

A rule may also carry an action on the destination site (`ReplyAction`):
`suspend` the site for the egress IP that got the reply, or `slow` that IP's
rate to it, for a time. Providers say in words when they throttle or block
an IP (Gmail's `421 4.7.28`, Microsoft's `S3150`, Yahoo's `[TSS04]`), so what
the relay does about it is data beside the class, not code; the relay applies
it pool-wide (`contracts.site_actions`). One rule is one class and at most one
action: the first rule that matches decides both.

Whether a class suppresses the address is data too (`suppression` in the
file): only classes that mean the address is bad suppress at once. A `5.7.1`
says the receiver's policy refused something - the sender, the content, the
IP's reputation - and nothing about the mailbox, so policy refusals at most
count toward a threshold (`after` bounces `withinDays`) and most classes never
suppress. Pure: no IO beyond reading the packaged file once.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Annotated, NamedTuple, Self

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from .policy import Spec

RULES_FILE = "bounce_rules.yaml"
MAX_POOL_RULES = 100  # a pool's additions to the defaults; more is a file, not a spec
MAX_PATTERN_CHARS = 500  # a text pattern, not a program
MAX_THRESHOLD_DAYS = 365
# A site action lasts at most a week: past that it is a routing decision for a
# person (drop the IP from the pool), not a reaction to one reply.
MAX_ACTION_SECONDS = 7 * 24 * 3600


class BounceClass(enum.StrEnum):
    """What a refusal or deferral was about (the `bounce_class` of an event)."""

    INVALID_RECIPIENT = "invalid_recipient"  # no such mailbox: suppress at once
    BAD_DOMAIN = "bad_domain"  # the domain cannot receive mail (NXDOMAIN, null MX)
    INACTIVE_MAILBOX = "inactive_mailbox"  # the mailbox is disabled or abandoned
    MAILBOX_FULL = "mailbox_full"
    INVALID_SENDER = "invalid_sender"  # the sender was refused: nothing about the recipient
    POLICY_RELATED = "policy_related"  # the receiver's local policy, reason unstated
    SPAM_RELATED = "spam_related"  # judged unsolicited or bulk
    CONTENT_RELATED = "content_related"  # the message itself: virus, attachment, content
    REPUTATION = "reputation"  # the sending IP or domain: blocklists, reputation
    AUTHENTICATION_FAILED = "authentication_failed"  # SPF, DKIM, DMARC, reverse DNS
    RATE_LIMITED = "rate_limited"  # too much, too fast: slow down
    MESSAGE_TOO_LARGE = "message_too_large"
    RELAYING_DENIED = "relaying_denied"  # the host is not this domain's MX (a routing mistake)
    HOST_REFUSED = "host_refused"  # the server refused the connection before any mailbox
    GREYLISTED = "greylisted"  # try again later, nothing is wrong
    TLS_FAILURE = "tls_failure"  # the TLS policy could not be met
    ROUTING_ERROR = "routing_error"  # DNS, connection or route trouble on the way
    PROTOCOL_ERROR = "protocol_error"  # a command or reply the other side did not understand
    TRANSIENT = "transient"  # any other temporary failure
    OTHER = "other"  # any other permanent failure


# The SMTP stages a rule can name (the relay's `ports.Stage` values; a test
# holds the two equal, the contracts cannot import the relay).
STAGES = (
    "dns",
    "connect",
    "greeting",
    "ehlo",
    "tls",
    "local",
    "mail",
    "rcpt",
    "data",
    "message",
    "lost",
)
# "550", "55x", "5xx": a reply code, x for any digit.
CODE = r"^[0-9x]{3}$"
# "5.1.1", "x.7.1", "5.7.x", "x.1.x": class.subject.detail, x for any value.
ENHANCED = r"^([245x])\.([0-9]{1,3}|x)\.([0-9]{1,3}|x)$"

Stage = Annotated[str, StringConstraints(pattern="^(" + "|".join(STAGES) + ")$")]
# A YAML file says `codes: [550]`: the number is taken as its digits.
CodePattern = Annotated[
    str,
    BeforeValidator(lambda v: f"{v:03d}" if isinstance(v, int) and not isinstance(v, bool) else v),
    StringConstraints(pattern=CODE),
]
EnhancedPattern = Annotated[str, StringConstraints(pattern=ENHANCED)]


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"text is not a regular expression: {exc}") from exc
    return pattern


TextPattern = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_PATTERN_CHARS), AfterValidator(_compiles)
]


class ActionKind(enum.StrEnum):
    """What a reply makes the relays do about its site, for the IP that got it."""

    SUSPEND = "suspend"  # send nothing to the site from this IP until the action ends
    SLOW = "slow"  # send to the site from this IP at most at a lower rate until it ends


# What a matching reply does to its site for the egress IP that got it, pool-wide.
class ReplyAction(Spec):
    kind: ActionKind = Field(description="suspend: nothing to the site from this IP; slow: less.")
    duration_seconds: int = Field(
        ge=1, le=MAX_ACTION_SECONDS, description="How long the action holds, in seconds."
    )
    max_duration_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ACTION_SECONDS,
        description=(
            "When set, the same reply again within one duration of the action's end "
            "doubles the duration, up to this (seconds); unset: never longer."
        ),
    )
    messages_per_minute: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="slow: this IP's rate to the site while the action holds (messages/min).",
    )
    rate_factor: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description=(
            "slow: also at most this fraction of the site's configured rate, when it has one."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        slowing = self.messages_per_minute is not None or self.rate_factor is not None
        if self.kind is ActionKind.SUSPEND and slowing:
            raise ValueError("a suspend action takes no messagesPerMinute or rateFactor")
        if self.kind is ActionKind.SLOW and self.messages_per_minute is None:
            raise ValueError("a slow action needs messagesPerMinute (the IP's rate while slowed)")
        if self.max_duration_seconds is not None and (
            self.max_duration_seconds < self.duration_seconds
        ):
            raise ValueError("maxDurationSeconds must be at least durationSeconds")
        return self


# One rule: every condition it names must hold; a condition left out matches
# anything. A rule names at least one condition.
class BounceRule(Spec):
    bounce_class: BounceClass = Field(description="The class a matching reply gets.")
    codes: list[CodePattern] = Field(
        default_factory=list,
        max_length=20,
        description="Reply codes, x for any digit (550, 55x, 4xx); empty: any.",
    )
    enhanced: list[EnhancedPattern] = Field(
        default_factory=list,
        max_length=20,
        description="RFC 3463 enhanced codes, x for any part (5.1.1, x.7.1, 5.7.x); empty: any.",
    )
    stages: list[Stage] = Field(
        default_factory=list,
        max_length=len(STAGES),
        description="SMTP stages of the reply (rcpt, mail, data, greeting, ...); empty: any.",
    )
    text: TextPattern | None = Field(
        default=None, description="Regular expression searched in the reply text, ignoring case."
    )
    description: str | None = Field(
        default=None, max_length=500, description="Why: the receiver or wording this rule is for."
    )
    action: ReplyAction | None = Field(
        default=None,
        description=(
            "What a matching reply does to its site for the egress IP that got it, "
            "on every relay of the pool: suspend it, or slow it, for a time."
        ),
    )

    @model_validator(mode="after")
    def _has_condition(self) -> Self:
        if not (self.codes or self.enhanced or self.stages or self.text):
            raise ValueError(
                f"a {self.bounce_class} rule needs at least one of codes, enhanced, stages, text"
            )
        return self


# When a class suppresses the address: `after` bounced replies of the class
# within `withinDays` (1: at once); a class without a policy never suppresses.
class SuppressionPolicy(Spec):
    after: int = Field(
        ge=1, le=100, description="Bounces of this class that suppress (1: at once)."
    )
    within_days: int = Field(
        default=7,
        ge=1,
        le=MAX_THRESHOLD_DAYS,
        description="Window the bounces are counted in, in days.",
    )


def _known_classes(policies: dict[str, SuppressionPolicy]) -> dict[str, SuppressionPolicy]:
    # Keys are checked here, not by the schema: a CRD's structural schema cannot
    # constrain map keys (no propertyNames).
    unknown = sorted(set(policies) - set(BounceClass))
    if unknown:
        raise ValueError(
            f"unknown bounce class {', '.join(unknown)}; known: {', '.join(BounceClass)}"
        )
    return {BounceClass(k): v for k, v in policies.items()}


ClassPolicies = Annotated[dict[str, SuppressionPolicy], AfterValidator(_known_classes)]


# The rules and suppression policies of the defaults file, or a pool's additions.
class BounceRules(Spec):
    rules: list[BounceRule] = Field(
        default_factory=list,
        max_length=MAX_POOL_RULES,
        description="Rules tried in order before the defaults; the first match decides.",
    )
    suppression: ClassPolicies = Field(
        default_factory=dict,
        description=(
            "Class -> when it suppresses the address, replacing the default for that class "
            "(after: 1 is at once); a class without a policy never suppresses."
        ),
    )


class BounceRulesError(ValueError):
    """A rule file that cannot be used, with the offending rule named."""


class _Compiled(NamedTuple):
    rule: BounceRule
    codes: tuple[re.Pattern[str], ...]
    enhanced: tuple[re.Pattern[str], ...]
    stages: frozenset[str]
    text: re.Pattern[str] | None


def _wildcard(pattern: str) -> re.Pattern[str]:
    # "x" stands for one digit in a code, for one whole part in an enhanced code
    if "." in pattern:
        parts = (r"\d{1,3}" if p == "x" else re.escape(p) for p in pattern.split("."))
        return re.compile(r"\.".join(parts))
    return re.compile(pattern.replace("x", r"\d"))


def _compile(rule: BounceRule) -> _Compiled:
    return _Compiled(
        rule,
        tuple(_wildcard(c) for c in rule.codes),
        tuple(_wildcard(e) for e in rule.enhanced),
        frozenset(rule.stages),
        re.compile(rule.text, re.IGNORECASE) if rule.text else None,
    )


class Classification(NamedTuple):
    bounce_class: BounceClass
    rule: BounceRule | None  # None: no rule matched (OTHER)
    suppression: SuppressionPolicy | None  # None: this class never suppresses


class BounceClassifier:
    """Rules in order (a pool's, then the defaults) and the suppression
    policy per class. Immutable once built: share it freely."""

    def __init__(
        self, rules: Sequence[BounceRule], suppression: Mapping[str, SuppressionPolicy]
    ) -> None:
        self._rules = tuple(_compile(r) for r in rules)
        self._suppression = dict(suppression)

    @property
    def rules(self) -> tuple[BounceRule, ...]:
        return tuple(c.rule for c in self._rules)

    def suppression(self, bounce_class: BounceClass) -> SuppressionPolicy | None:
        return self._suppression.get(bounce_class)

    def classify(
        self, code: int, enhanced: str | None, text: str, stage: str | None = None
    ) -> Classification:
        """The class of one reply: the first rule whose conditions all hold."""
        code_text = f"{code:03d}" if 0 <= code <= 999 else ""
        for c in self._rules:
            if c.stages and stage not in c.stages:
                continue
            if c.codes and not any(p.fullmatch(code_text) for p in c.codes):
                continue
            if c.enhanced and not (enhanced and any(p.fullmatch(enhanced) for p in c.enhanced)):
                continue
            if c.text is not None and not c.text.search(text):
                continue
            return Classification(
                c.rule.bounce_class, c.rule, self._suppression.get(c.rule.bounce_class)
            )
        return Classification(BounceClass.OTHER, None, self._suppression.get(BounceClass.OTHER))

    def extended(self, pool: BounceRules) -> BounceClassifier:
        """This classifier with a pool's rules tried first and its suppression
        policies replacing the defaults class by class."""
        if not pool.rules and not pool.suppression:
            return self
        return BounceClassifier(
            [*pool.rules, *self.rules], {**self._suppression, **pool.suppression}
        )


def parse_rules(text: str, source: str = RULES_FILE) -> BounceRules:
    """A rule file's text -> its rules, or BounceRulesError naming the problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BounceRulesError(f"{source}: not YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise BounceRulesError(f"{source}: expected a mapping with rules and suppression")
    try:
        return _DefaultsFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<file>'}: {e['msg']}" for e in exc.errors()
        )
        raise BounceRulesError(f"{source}: {problems}") from exc


class _DefaultsFile(BounceRules):
    # The packaged file is not bounded by a pool's MAX_POOL_RULES.
    rules: list[BounceRule] = Field(default_factory=list)


@functools.cache
def default_rules() -> BounceRules:
    """The packaged defaults (read once: the file is part of the release)."""
    text = resources.files(__package__).joinpath(RULES_FILE).read_text(encoding="utf-8")
    return parse_rules(text)


@functools.cache
def default_classifier() -> BounceClassifier:
    d = default_rules()
    return BounceClassifier(d.rules, d.suppression)


def classifier_for(pool: BounceRules | None) -> BounceClassifier:
    """The defaults, extended by a pool's rules when it has any."""
    return default_classifier() if pool is None else default_classifier().extended(pool)
