"""The relay configuration: what the operator writes into a pool's ConfigMap.

One typed document (`RelayConfig`) is the whole contract between control and
data plane: the operator renders it from a SendingPool, the relay loads it at
start and again whenever the mounted file changes. Unknown keys are refused so
a typo in a pool never silently becomes a default; every quantity carries its
unit in its name.

Policy is data (KumoMTA's "shaping"): the scheduler asks `throttle_for()` and
`group_of()` rather than reading dicts, so lookup rules live in one place.
"""

from __future__ import annotations

import enum
import fnmatch
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_VERSION = 1


class ConfigError(ValueError):
    """A relay config that cannot be used, with the offending field named."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Model):
    bootstrap_servers: str = Field(description="comma-separated host:port list")
    group_id: str = Field(description="consumer group shared by all replicas of the pool")
    outbound_topic: str
    events_topic: str
    dlq_topic: str
    suppressions_topic: str = "mailpipe.suppressions"
    control_topic: str = Field(
        default="mailpipe.campaigns", description="compacted campaign states (paused, cancelled)"
    )
    delay_topics: dict[str, str] = Field(
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


class Throttle(_Model):
    """Shaping for one destination (domain or domain group), per egress IP unless noted."""

    max_connections: int = Field(default=10, ge=1, description="concurrent connections, pool-wide")
    messages_per_minute: float | None = Field(
        default=None, gt=0, description="pool-wide message rate; None = unlimited"
    )
    messages_per_connection: int = Field(
        default=100, ge=1, description="messages before a connection is closed and reopened"
    )
    recipients_per_transaction: int = Field(default=50, ge=1, le=1000)


class WarmupStep(_Model):
    day: int = Field(ge=1, description="warm-up day this cap applies from (1 = first day sent)")
    daily_limit: int = Field(ge=0, description="messages per day in total from the IP")
    group_limits: dict[str, int] = Field(
        default_factory=dict, description="domain group -> messages per day from the IP"
    )


class EgressIP(_Model):
    address: str = Field(description="source address the relay binds to")
    helo: str = Field(description="EHLO name; should match the IP's PTR record")
    warmup: bool = Field(default=False, description="True while this IP follows the schedule")
    warmup_day_offset: int = Field(
        default=0, ge=0, description="days already completed before this config (manual skip)"
    )


class WarmupSettings(_Model):
    schedule: list[WarmupStep] = Field(default_factory=list)
    bounce_rate_pause: float = Field(default=0.10, ge=0, le=1, description="pause IP above this")
    complaint_rate_pause: float = Field(default=0.003, ge=0, le=1)
    min_sample: int = Field(default=200, ge=1, description="messages before rates are judged")
    timezone: str = Field(default="UTC", description="where a warm-up day starts and ends")

    @model_validator(mode="after")
    def _monotonic(self) -> WarmupSettings:
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


class RetrySettings(_Model):
    schedule_seconds: list[int] = Field(
        default_factory=lambda: [60, 600, 3600, 6 * 3600],
        description="wait before attempt n+1; the last step repeats",
    )
    max_age_seconds: int = Field(default=3 * 24 * 3600, ge=1, description="then expired")

    def delay_for(self, attempt: int) -> int:
        steps = self.schedule_seconds or [60]
        return steps[min(max(attempt - 1, 0), len(steps) - 1)]


class TLSMode(enum.StrEnum):
    OPPORTUNISTIC = "opportunistic"
    REQUIRED = "required"
    DISABLED = "disabled"


class TLSSettings(_Model):
    mode: TLSMode = TLSMode.OPPORTUNISTIC
    verify: bool = Field(default=False, description="verify certificates (most MX certs don't)")


class DKIMSettings(_Model):
    domain: str
    selector: str
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


class Route(_Model):
    """A static next hop that replaces MX lookup (tests, smart hosts)."""

    host: str
    port: int = Field(default=25, ge=1, le=65535)


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
    tls: TLSSettings = Field(default_factory=TLSSettings)
    dkim: DKIMSettings | None = None
    routes: dict[str, list[Route]] = Field(
        default_factory=dict, description="domain -> static hosts in order, instead of MX"
    )
    smtp_port: int = Field(default=25, ge=1, le=65535, description="port of MX hosts")
    dns_nameserver: str | None = Field(
        default=None, description="'host:port' resolver to use instead of /etc/resolv.conf"
    )
    connect_timeout_seconds: float = Field(default=30, gt=0)
    command_timeout_seconds: float = Field(default=300, gt=0, description="RFC 5321 4.5.3.2")
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="0 = no metrics server")

    @model_validator(mode="after")
    def _check(self) -> RelayConfig:
        if self.v != CONFIG_VERSION:
            raise ValueError(f"unknown config version {self.v}, this relay reads {CONFIG_VERSION}")
        known = set(self.domain_groups)
        for step in self.warmup.schedule:
            unknown = set(step.group_limits) - known
            if unknown:
                raise ValueError(f"warmup group_limits name unknown groups {sorted(unknown)}")
        if len({e.address for e in self.egress}) != len(self.egress):
            raise ValueError("egress addresses must be unique")
        return self

    def group_of(self, domain: str) -> str | None:
        """The domain group a destination domain belongs to, if any (first match wins)."""
        domain = domain.lower()
        for group, patterns in self.domain_groups.items():
            if any(fnmatch.fnmatchcase(domain, p.lower()) for p in patterns):
                return group
        return None

    def throttle_for(self, domain: str) -> Throttle:
        """Shaping for a domain: its own override, else its group's, else the default."""
        domain = domain.lower()
        if domain in self.throttles:
            return self.throttles[domain]
        group = self.group_of(domain)
        if group is not None and group in self.throttles:
            return self.throttles[group]
        return self.throttle_default

    def shaping_key(self, domain: str) -> str:
        """What a throttle counts against: the override's name, else the domain itself."""
        domain = domain.lower()
        if domain in self.throttles:
            return domain
        group = self.group_of(domain)
        if group is not None and group in self.throttles:
            return group
        return domain


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


def dump_config(config: RelayConfig) -> str:
    """The canonical YAML the operator writes; stable key order so hashes are stable."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=True)
