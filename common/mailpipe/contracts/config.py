"""The relay configuration: what the operator writes into a pool's ConfigMap.

One typed document (`RelayConfig`) is the whole contract between control and
data plane: the operator renders it from a SendingPool, the relay loads it at
start and again whenever the mounted file changes. Unknown keys are refused so
a typo in a pool never silently becomes a default; every quantity carries its
unit in its name.

Policy is data (KumoMTA's "shaping"): the relay asks `site_of()` and
`throttle_for_site()` rather than reading dicts, so lookup rules live in one
place (`sites`: what a destination's site is).
The policy types (egress IPs, throttles, warm-up steps, retry, TLS, routes)
are the SendingPool spec's own (`policy`), so the operator passes what it
parsed, and whatever the relay refuses the CRD schema refuses too.

`parse_config` validates the whole document before anyone sees it: any
invalid value, a bad delay step or an unknown time zone included, raises
`ConfigError`, so a reload either applies a complete config or none.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import sites
from .bounces import BounceRules
from .delays import DelayStep
from .delivery import (
    DeliveryPolicy,
    SMTPTimeouts,
    check_routes,
    destination_refusal,
    forbidden_reason,
)
from .errors import PermanentError
from .kafka_security import KafkaConnection, KafkaSecurity
from .policy import (
    DKIMIdentity,
    EgressIP,
    RetrySettings,
    Route,
    Throttle,
    TimeZone,
    TLSMode,
    TLSSettings,
    TLSSite,
    WarmupPolicy,
    WarmupStep,
    check_pool,
    dane_resolver_problem,
    tls_sites_problem,
)
from .topics import CONTROL_SUFFIX, NEVER_MAIL_TOPIC, SUPPRESSIONS_SUFFIX, Topics, namespace_space

__all__ = [
    "ConfigError",
    "DKIMSettings",
    "DeliveryPolicy",
    "EgressIP",
    "FeedbackSettings",
    "KafkaConnection",
    "KafkaSecurity",
    "KafkaSettings",
    "RelayConfig",
    "RelayTLSSettings",
    "RetrySettings",
    "Route",
    "SMTPTimeouts",
    "TLSMode",
    "TLSSettings",
    "TLSSite",
    "Throttle",
    "UnsubscribeSettings",
    "WarmupSettings",
    "WarmupStep",
    "check_routes",
    "destination_refusal",
    "dump_config",
    "forbidden_reason",
    "load_config",
    "parse_config",
]

CONFIG_VERSION = 1


class ConfigError(PermanentError, ValueError):
    """A relay config that cannot be used, with the offending field named."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Model):
    bootstrap_servers: str = Field(description="comma-separated host:port list")
    group_id: str = Field(description="consumer group shared by all replicas of the pool")
    outbound_topic: str
    events_topic: str
    dlq_topic: str
    suppressions_topic: str = Field(
        description="compacted; where this pool's hard bounces go (its namespace's, or its own)"
    )
    control_topic: str = Field(
        description="compacted campaign states (paused, cancelled) of the pool's namespace"
    )
    delay_topics: dict[DelayStep, str] = Field(
        default_factory=dict,
        description="delay step (e.g. '1m') -> topic; records wait there until due",
    )
    client_id: str = "mailpipe-relay"
    ready_queue_per_domain: int = Field(
        default=2000,
        ge=1,
        description="records held per domain; beyond it they overflow to a delay topic",
    )
    max_in_flight_records: int = Field(
        default=2000,
        ge=1,
        description="read-ahead bound across all domains; the duplicate window on a crash",
    )
    obeyed_suppressions_topics: list[str] = Field(
        default_factory=lambda: [NEVER_MAIL_TOPIC],
        description="compacted suppression topics obeyed but never written (never-mail list)",
    )
    security: KafkaSecurity = Field(
        default_factory=KafkaSecurity,
        description="how the relay logs in (SASL, TLS): file paths only, never a secret",
    )

    @classmethod
    def for_topics(
        cls, topics: Topics, *, bootstrap_servers: str, group_id: str, **settings: Any
    ) -> KafkaSettings:
        """Settings that read and write `topics` (built by `Topics.for_prefix`)."""
        return cls(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            outbound_topic=topics.outbound,
            events_topic=topics.events,
            dlq_topic=topics.dlq,
            suppressions_topic=topics.suppressions,
            control_topic=topics.control,
            delay_topics=topics.delay,
            obeyed_suppressions_topics=list(topics.obeyed),
            **settings,
        )

    @property
    def connection(self) -> KafkaConnection:
        """The cluster and the identity these settings log in with."""
        return KafkaConnection(bootstrap_servers=self.bootstrap_servers, security=self.security)

    @property
    def topics(self) -> Topics:
        """The topics these settings name, as the operator created them."""
        return Topics(
            outbound=self.outbound_topic,
            events=self.events_topic,
            dlq=self.dlq_topic,
            delay=dict(self.delay_topics),
            suppressions=self.suppressions_topic,
            control=self.control_topic,
            obeyed=tuple(self.obeyed_suppressions_topics),
        )


class WarmupSettings(WarmupPolicy):
    timezone: TimeZone = Field(default="UTC", description="where a warm-up day starts and ends")


class DKIMSettings(DKIMIdentity):
    private_key_path: str = Field(description="PEM file mounted from a Secret")
    headers: list[str] = Field(
        default_factory=lambda: [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "MIME-Version",
            "Content-Type",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
        ]
    )


class UnsubscribeSettings(_Model):
    """The pool's one-click endpoint: a record that asks for it (`ListUnsubscribe.endpoint`)
    gets `base_url` + a token signed for its recipient (`contracts.feedback_token`)."""

    base_url: str = Field(
        pattern=r"^https://[^\s<>]+/$", description="https URL up to the token, ending in '/'"
    )
    keys_dir: str = Field(description="the feedback key Secret, mounted: one file per key id")


class RelayTLSSettings(TLSSettings):
    """The pool's TLS policy plus where the relay finds its CA bundle (the operator
    mounts the pool's Secret or ConfigMap and writes the path)."""

    ca_file: str | None = Field(
        default=None,
        description="PEM bundle of CAs trusted besides the system's, to verify MX certificates"
        " (a private CA); only with a verifying mode",
    )

    @model_validator(mode="after")
    def _ca_needs_verify(self) -> RelayTLSSettings:
        problem = self.problem(ca_bundle=self.ca_file is not None)
        if problem is not None:
            raise ValueError(problem)
        return self


# A domain name as DNS spells it: what a bounce domain must be (it is the
# right-hand side of every Return-Path the pool writes).
_DOMAIN = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"


class FeedbackSettings(_Model):
    """What comes back (issue 20): the pool's bounce domain and the key that signs
    and verifies its tokens. The relay writes `b-<token>@<bounce_domain>` as each
    message's MAIL FROM, a trace header and a Feedback-ID; the feedback receiver
    (`mailpipe.inbound.feedback_server`) reads the same settings to accept only
    those tokens."""

    bounce_domain: str = Field(
        pattern=_DOMAIN,
        max_length=253,
        description="lower-case domain whose MX is the feedback receiver",
    )
    keys_path: str = Field(
        description="directory of the mounted key Secret: one file per key id (a-z, 2-7),"
        " each at least 32 random bytes; the newest id signs (`keys_from_directory`)"
    )
    fbl_local_part: str = Field(
        default="fbl",
        pattern=r"^[a-z0-9][a-z0-9._+-]{0,63}$",
        description="local part at the bounce domain that takes providers' ARF reports",
    )
    validity_days: int = Field(
        default=60,
        ge=1,
        le=365,
        description="how long a token is honoured: bounces come within days, complaints weeks",
    )
    listen_address: str = Field(default="0.0.0.0", description="address the receiver binds")
    listen_port: int = Field(default=2525, ge=1, le=65535, description="its SMTP port")
    max_message_bytes: int = Field(
        default=1024 * 1024,
        ge=10_000,
        le=10 * 1024 * 1024,
        description="larger reports are refused (552): a DSN is a few KB",
    )
    metrics_port: int = Field(default=9091, ge=0, le=65535, description="0 = no metrics server")


class RelayConfig(_Model):
    v: int = CONFIG_VERSION
    pool: str = Field(description="'namespace/name' of the SendingPool")
    kafka: KafkaSettings
    egress: list[EgressIP] = Field(min_length=1)
    domain_groups: dict[str, list[str]] = Field(
        default_factory=dict, description="group -> domain patterns (fnmatch, lower-case)"
    )
    throttle_default: Throttle = Field(default_factory=Throttle)
    throttles: dict[str, Throttle] = Field(
        default_factory=dict, description="domain or group name -> shaping override"
    )
    warmup: WarmupSettings = Field(default_factory=WarmupSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    tls: RelayTLSSettings = Field(default_factory=lambda: RelayTLSSettings())
    dkim: DKIMSettings | None = None
    unsubscribe: UnsubscribeSettings | None = Field(
        default=None, description="the pool's one-click unsubscribe endpoint, if it has one"
    )
    routes: dict[str, list[Route]] = Field(
        default_factory=dict, description="domain -> static hosts in order, instead of MX"
    )
    smtp_port: int = Field(default=25, ge=1, le=65535, description="port of MX hosts")
    dns_nameserver: str | None = Field(
        default=None, description="'host:port' resolver to use instead of /etc/resolv.conf"
    )
    delivery: DeliveryPolicy = Field(
        default_factory=DeliveryPolicy,
        description="stage timeouts, tarpit budget, destination policy",
    )
    bounces: BounceRules = Field(
        default_factory=BounceRules,
        description="the pool's bounce rules, tried before the packaged defaults, and its"
        " suppression policy per class (contracts.bounces)",
    )
    feedback: FeedbackSettings | None = Field(
        default=None,
        description="VERP Return-Path, trace header and the feedback receiver; None: MAIL"
        " FROM is the record's sender, as before",
    )
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="0 = no metrics server")
    metrics_address: str = Field(
        default="0.0.0.0",
        description="address the metrics endpoint binds; under hostNetwork the operator"
        " sets the pod IP (the node's primary address) so egress IPs never serve it",
    )
    metrics_domain_labels: int = Field(
        default=50,
        ge=0,
        le=1000,
        description="recipient domains that get their own metrics label (shaping keys and"
        " the first seen); the rest are counted as 'other', so a list of random domains"
        " cannot grow the relay's time series without bound",
    )

    @model_validator(mode="before")
    @classmethod
    def _namespace_topics(cls, data: Any) -> Any:
        # A hand-written config without suppression or control topics gets its
        # namespace's (from `pool`), never a cluster-global one (issue 11).
        kafka = data.get("kafka") if isinstance(data, dict) else None
        pool = data.get("pool") if isinstance(data, dict) else None
        if isinstance(kafka, dict) and isinstance(pool, str) and "/" in pool:
            space = namespace_space(pool.split("/", 1)[0])
            kafka = {
                "suppressions_topic": f"{space}.{SUPPRESSIONS_SUFFIX}",
                "control_topic": f"{space}.{CONTROL_SUFFIX}",
                **kafka,
            }
            data = {**data, "kafka": kafka}
        return data

    @model_validator(mode="after")
    def _check(self) -> RelayConfig:
        if self.v != CONFIG_VERSION:
            raise ValueError(f"unknown config version {self.v}, this relay reads {CONFIG_VERSION}")
        check_pool(self.egress, self.domain_groups, self.warmup.schedule)
        check_routes(self.routes, self.delivery)
        problem = dane_resolver_problem(self.tls, self.dns_nameserver) or tls_sites_problem(
            self.tls, self.domain_groups
        )
        if problem is not None:
            raise ValueError(problem)
        return self

    def group_of(self, domain: str) -> str | None:
        """The domain group a destination domain belongs to, if any (first match wins)."""
        return sites.group_of(domain, self.domain_groups)

    def throttle_for(self, domain: str) -> Throttle:
        """Shaping for a domain: its own override, else its group's, else the default."""
        domain = domain.lower()
        if domain in self.throttles:
            return self.throttles[domain]
        group = self.group_of(domain)
        if group is not None and group in self.throttles:
            return self.throttles[group]
        return self.throttle_default

    def tls_for(self, domain: str) -> TLSSettings | TLSSite:
        """The TLS policy of a destination: its domain's site override, else its
        group's, else the pool's (the lookup of `throttle_for`, so a name means
        the same thing in both maps)."""
        domain = domain.lower()
        sites = self.tls.sites
        if domain in sites:
            return sites[domain]
        group = self.group_of(domain)
        if group is not None and group in sites:
            return sites[group]
        return self.tls

    def site_of(self, domain: str) -> str:
        """The destination's site as the config knows it: what its limits count
        under and what its records are keyed by (`contracts.sites`, the naming
        rule; the relay may find another from the domain's MX hosts)."""
        return sites.site_of(domain, self.domain_groups, self.throttles)

    def written_site(self, domain: str) -> str | None:
        """The site the config names for `domain` (its own override, its group), or None."""
        return sites.written_site(domain, self.domain_groups, self.throttles)

    def throttle_for_site(self, site: str) -> Throttle:
        """A site's shaping: its override (a domain's, a group's, an MX site's
        such as `google.com`), else the default. For a site from `site_of` it is
        `throttle_for` of each of its domains."""
        return self.throttles.get(site, self.throttle_default)


def parse_config(text: str) -> RelayConfig:
    """Parse YAML (or JSON) text into a RelayConfig; ConfigError names the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"relay config is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("relay config must be a mapping")
    try:
        return RelayConfig.model_validate(data)
    except ValidationError as exc:
        msgs = [
            f"{'.'.join(str(p) for p in e['loc']) or '<config>'}: {e['msg']}" for e in exc.errors()
        ]
        raise ConfigError("invalid relay config: " + "; ".join(msgs)) from exc


def load_config(path: Path) -> RelayConfig:
    return parse_config(path.read_text())


_REUSE_DEFAULTS: Final = MappingProxyType(
    {
        name: Throttle.model_fields[name].default
        for name in ("connection_idle_seconds", "connection_max_age_seconds")
    }
)


def dump_config(config: RelayConfig) -> str:
    """The canonical YAML the operator writes; stable key order so hashes are stable."""
    data = config.model_dump(mode="json")
    security = config.kafka.security
    if security == KafkaSecurity():  # no login: the config (and its hash) as before it existed
        del data["kafka"]["security"]
    else:
        data["kafka"]["security"] = security.model_dump(mode="json", exclude_none=True)
    if config.bounces == BounceRules():  # the defaults: the config (and its hash) as before
        del data["bounces"]
    if config.tls.ca_file is None:  # no CA bundle: the config (and its hash) as before it existed
        del data["tls"]["ca_file"]
    if config.feedback is None:  # no return path: the config (and its hash) as before
        del data["feedback"]
    if config.unsubscribe is None:  # no endpoint: the config (and its hash) as before it existed
        del data["unsubscribe"]
    # Connection reuse limits at their defaults: the config (and its hash) as before they existed.
    for throttle in (data["throttle_default"], *data["throttles"].values()):
        for name in _REUSE_DEFAULTS:
            if throttle[name] == _REUSE_DEFAULTS[name]:
                del throttle[name]
    return yaml.safe_dump(data, sort_keys=True)
