"""Typed specs of the two custom resources, the single source of their schemas.

The CRDs in `crds/` are generated from these models (`crdgen`), and the
handlers parse every object through them, so the schema the apiserver enforces
and the one the operator reads cannot drift. Field names are camelCase on the
wire (Kubernetes API conventions) and snake_case in Python.

The pool's delivery policy (egress IPs, warm-up, throttles, retry, TLS, DKIM
identity, routes) is not defined here but in `mailpipe.contracts.policy`, the
definitions the relay config is made of too: the operator hands the relay the
very objects it parsed, so the two planes cannot disagree on a field.

Cross-field rules that the apiserver can check itself are CEL rules
(`x-kubernetes-validations`), so a bad object is refused at `kubectl apply`
with a message naming the field, instead of being accepted and failing later.
"""

from __future__ import annotations

import enum
from typing import Any, Self

from pydantic import ConfigDict, Field, ValidationInfo, model_validator

from mailpipe.contracts.bounces import BounceRules
from mailpipe.contracts.delays import DelayStep
from mailpipe.contracts.delivery import DeliveryPolicy, check_routes
from mailpipe.contracts.kafka_security import SaslMechanism, SecurityProtocol
from mailpipe.contracts.policy import (
    MAX_DOMAIN_GROUPS,
    TIME_ZONE,
    DKIMIdentity,
    EgressIP,
    RetrySettings,
    Route,
    Spec,
    Throttle,
    TimeZone,
    TLSSettings,
    WarmupPolicy,
    check_pool,
    dane_resolver_problem,
    tls_sites_problem,
)

from .defaults import CONTEXT_KEY, PoolDefaults

GROUP = "mailpipe.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

ADDRESS = r"^[^@\s<>]+@[^@\s<>]+$"
CLOCK = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # Secret names may contain dots
TOPIC = r"^[A-Za-z0-9._-]{1,200}$"
# Gmail clips an HTML body beyond 102 KB, so a bigger template is a mistake; the
# limit also bounds what one render compiles (a 1 MB template cost 600 MB RSS).
MAX_TEMPLATE_CHARS = 128 * 1024


def _cel(*rules: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    # A third element is a messageExpression: the apiserver evaluates it to name
    # what is wrong (a map key, e.g. the site), falling back to the message.
    return {
        "x-kubernetes-validations": [
            {"rule": r[0], "message": r[1]} | ({"messageExpression": r[2]} if len(r) > 2 else {})
            for r in rules
        ]
    }


# The first key of `tls.sites` (seen from the TLS object) breaking a condition, for messages.
def _first_site(bad: str) -> str:
    return f"'tls.sites.' + self.sites.filter(k, {bad})[0]"


_SITE_VERIFY_BAD = (
    "has(self.sites[k].verify) && self.sites[k].verify && "
    "!(self.sites[k].mode in ['required', 'verify'])"
)
_SITE_NOT_LOWER = "k.contains('.') && k.lowerAscii() != k"
_SITE_VERIFIES = (
    "self.sites[k].mode in ['verify', 'mta-sts'] || (self.sites[k].mode == 'required' && "
    "has(self.sites[k].verify) && self.sites[k].verify)"
)


# --- SendingPool -------------------------------------------------------------


class Warmup(WarmupPolicy):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            # `!has(self.schedule)`: a warmup with only a timeZone has no schedule key
            (
                "!has(self.schedule) || self.schedule.all(a, self.schedule.all(b, "
                "a.day < b.day ? a.dailyLimit <= b.dailyLimit : true))",
                "warm-up schedule: dailyLimit must not decrease from one day to a later one",
            ),
            (
                "!has(self.schedule) || "
                "self.schedule.all(a, self.schedule.exists_one(b, b.day == a.day))",
                "warm-up schedule: each day may appear only once",
            ),
        )
    )
    time_zone: TimeZone = Field(default="UTC", description="Where warm-up days start.")


class Retry(RetrySettings):
    # The retry schedule must fit in the max age (when both are written; the
    # operator checks the defaults too: validation.semantic_problems).
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.scheduleSeconds) || !has(self.maxAgeSeconds) || "
                "self.scheduleSeconds.sum() <= self.maxAgeSeconds",
                "retry schedule is longer than maxAgeSeconds: its last retries would never run",
            )
        )
    )


class Throttles(Spec):
    default: Throttle = Field(default_factory=Throttle, description="Shaping for every domain.")
    overrides: dict[str, Throttle] = Field(
        default_factory=dict, description="Shaping per destination domain or domain group name."
    )


class SecretKeyRef(Spec):
    name: str = Field(pattern=DNS_LABEL, description="Secret in the pool's namespace.")
    key: str = Field(default="private.pem", description="Key of the PEM private key in the Secret.")


class DKIM(DKIMIdentity):
    secret_ref: SecretKeyRef = Field(description="Where the private key is.")


class SecretName(Spec):
    name: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="Secret in the pool's namespace."
    )


class Feedback(Spec):
    """What comes back (issue 20): each message's Return-Path is
    b-<signed token>@<bounceDomain>, and the feedback receiver, the bounce domain's
    MX, turns bounces and complaints into events and suppressions."""

    bounce_domain: str = Field(
        pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$",
        max_length=253,
        description="Lower-case domain whose MX is the pool's feedback receiver.",
    )
    key_secret_ref: SecretName = Field(
        description=(
            "Secret of token keys: key id (a-z, 2-7) -> at least 32 random bytes; the"
            " newest id signs, older ones still verify (rotation)."
        )
    )
    fbl_local_part: str = Field(
        default="fbl",
        pattern=r"^[a-z0-9][a-z0-9._+-]{0,63}$",
        description="Local part at the bounce domain given to providers' feedback loops.",
    )
    validity_days: int = Field(
        default=60, ge=1, le=365, description="How long a return path or trace token is honoured."
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=10,  # a few receivers take a pool's reports; more is a typo
        description=(
            "Feedback receiver replicas (Deployment mailpipe-feedback-<pool>, Service of"
            " the same name on port 25); 0 stops the receiver."
        ),
    )


class PoolUnsubscribe(Spec):
    base_url: str = Field(
        pattern=r"^https://[^\s<>]+/$",
        max_length=200,
        description=(
            "https URL of the one-click endpoint up to the token, ending in '/', "
            "e.g. https://unsubscribe.example.com/u/ (RFC 8058 needs https)."
        ),
    )
    key_secret: str = Field(
        pattern=DNS_LABEL,
        max_length=253,
        description=(
            "Secret of the feedback keys: one key per entry (the entry name is the key id, "
            "a-z and 2-7; the value at least 32 random bytes); the last id signs."
        ),
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=10,  # a one-click POST is cheap: a few endpoints serve a pool
        description=(
            "Endpoint replicas (Deployment mailpipe-unsubscribe-<pool>, Service of the"
            " same name on port 80, behind your https Ingress); 0 stops it."
        ),
    )


class SuppressedRecipients(enum.StrEnum):
    """What the submission endpoint does with a suppressed recipient."""

    REFUSE = "Refuse"  # 550 5.7.1 at RCPT with the reason: the application learns it
    DROP = "Drop"  # accepted and not sent: the application cannot probe the list


# The endpoint carries a message inside one Kafka record, and Kafka's default
# record limit is 1 MiB (the topics' max.message.bytes): larger mail would be
# refused for ever once encoded, so the spec cannot ask for it.
SUBMISSION_MAX_MESSAGE_BYTES = 1024 * 1024
SUBMISSION_DEFAULT_MESSAGE_BYTES = 768 * 1024  # the endpoint's default, room for the JSON


class PoolSubmission(Spec):
    """SMTP submission for applications (`mailpipe submission`): the operator runs it
    as Deployment and Service mailpipe-submission-<pool> (587 STARTTLS, 465
    implicit TLS). Who may send what is per user, in the users Secret."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.starttlsPort) || !has(self.implicitTlsPort) || "
                "self.starttlsPort != 0 || self.implicitTlsPort != 0",
                "submission: starttlsPort and implicitTlsPort cannot both be 0 (no listener)",
            ),
            (
                "!has(self.starttlsPort) || !has(self.implicitTlsPort) || "
                "self.starttlsPort == 0 || self.starttlsPort != self.implicitTlsPort",
                "submission: starttlsPort and implicitTlsPort must differ",
            ),
        )
    )

    hostname: str = Field(
        pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$",
        max_length=253,
        description="Lower-case name in the greeting; the TLS certificate must be for it.",
    )
    tls_secret: str = Field(
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="Secret of type kubernetes.io/tls (tls.crt, tls.key) the endpoint serves.",
    )
    users_secret: str = Field(
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description=(
            "Secret whose key users.yaml maps each user to password_hash (`mailpipe "
            "submission hash-password`), sender_domains and messages_per_minute."
        ),
    )
    starttls_port: int = Field(
        default=587, ge=0, le=65535, description="Service port of STARTTLS submission; 0: none."
    )
    implicit_tls_port: int = Field(
        default=465, ge=0, le=65535, description="Service port of implicit TLS (RFC 8314); 0: none."
    )
    max_message_bytes: int = Field(
        default=SUBMISSION_DEFAULT_MESSAGE_BYTES,
        ge=1024,
        le=SUBMISSION_MAX_MESSAGE_BYTES,
        description="Largest message taken (SIZE; 552 5.3.4 above); at most Kafka's 1 MiB record.",
    )
    suppressed_recipients: SuppressedRecipients = Field(
        default=SuppressedRecipients.REFUSE,
        description="A suppressed recipient: Refuse (550 5.7.1 at RCPT) or Drop (silently).",
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=10,  # each replica has its own Kafka transactional id; a few serve a pool
        description=(
            "Endpoint replicas (Deployment mailpipe-submission-<pool>, Service of the same"
            " name); 0 stops it."
        ),
    )

    @model_validator(mode="after")
    def _listeners(self) -> Self:
        if self.starttls_port == 0 and self.implicit_tls_port == 0:
            raise ValueError("starttlsPort and implicitTlsPort cannot both be 0 (no listener)")
        if self.starttls_port and self.starttls_port == self.implicit_tls_port:
            raise ValueError("starttlsPort and implicitTlsPort must differ")
        return self


class LocalObjectReference(Spec):
    name: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="Name in the pool's namespace."
    )


class DeletionPolicy(enum.StrEnum):
    """What deleting a SendingPool does to its own Kafka topics (as Crossplane's
    `deletionPolicy` for external resources, PersistentVolumes' reclaim policy)."""

    DELETE = "Delete"  # outbound, delay, events and DLQ topics are deleted with the pool
    RETAIN = "Retain"  # they stay: events kept for audit, a re-created pool resumes them


class KafkaSpec(Spec):
    # What admission can say without the namespace (CEL cannot see it): a prefix
    # stays under `mailpipe.` and out of the platform's `mailpipe._` space. The
    # operator checks the namespace part (`tenancy`, Ready=False TopicNotOwned).
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.topicPrefix) || (self.topicPrefix.startsWith('mailpipe.') && "
                "!self.topicPrefix.startsWith('mailpipe._'))",
                "kafka.topicPrefix must start with mailpipe.<namespace>. "
                "(topics belong to their namespace)",
            ),
            (
                "!has(self.securityProtocol) || !self.securityProtocol.startsWith('SASL_') || "
                "(has(self.saslMechanism) && has(self.credentialsSecretRef))",
                "kafka.securityProtocol SASL_* needs saslMechanism and credentialsSecretRef",
            ),
            (
                "!has(self.saslMechanism) || (has(self.securityProtocol) && "
                "self.securityProtocol.startsWith('SASL_'))",
                "kafka.saslMechanism needs securityProtocol SASL_PLAINTEXT or SASL_SSL",
            ),
        )
    )
    bootstrap_servers: str = Field(
        default="",
        description="Kafka bootstrap servers, host:port,... (unset: the chart's "
        "kafka.bootstrapServers).",
    )
    topic_prefix: str | None = Field(
        default=None,
        pattern=TOPIC,
        description=(
            "Prefix of the pool's topics, inside mailpipe.<namespace>. "
            "(default: mailpipe.<namespace>.<name>)."
        ),
    )
    # 12 partitions: enough to spread domains over a dozen relay replicas
    partitions: int = Field(default=12, ge=1, le=1000, description="Partitions of each topic.")
    replication_factor: int = Field(default=1, ge=1, le=7, description="Replicas of each topic.")
    delay_steps: list[DelayStep] = Field(
        default_factory=lambda: [DelayStep(s) for s in ("1m", "10m", "1h", "6h")],
        min_length=1,
        max_length=10,
        description="Delay topics for retries and scheduled mail, e.g. 1m, 10m, 1h.",
    )
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.DELETE,
        description=(
            "Deleting the pool deletes its own topics (outbound, delay, events, DLQ), or "
            "Retain keeps them. The shared suppression and campaign topics are never deleted."
        ),
    )
    # The relays' Kafka login (issue 11): with the broker's ACLs, what lets it
    # tell this namespace's relays from another's. Only paths reach the relay
    # config; the Secret is mounted read-only (`pool.CREDENTIALS_DIR`).
    security_protocol: SecurityProtocol = Field(
        default=SecurityProtocol.PLAINTEXT,
        description="How the relays reach Kafka: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
    )
    sasl_mechanism: SaslMechanism | None = Field(
        default=None,
        description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (securityProtocol SASL_* only).",
    )
    credentials_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description=(
            "Secret in the pool's namespace with the relays' Kafka login, mounted read-only "
            "into them: keys username and password (SASL_*), optional ca.crt (the broker's "
            "CA, SSL and SASL_SSL) and tls.crt with tls.key (a client certificate)."
        ),
    )

    @model_validator(mode="after")
    def _login(self) -> Self:
        p = self.security_protocol
        if p.sasl and (self.sasl_mechanism is None or self.credentials_secret_ref is None):
            raise ValueError(
                f"kafka.securityProtocol {p} needs saslMechanism and credentialsSecretRef"
            )
        if not p.sasl and self.sasl_mechanism is not None:
            raise ValueError(
                "kafka.saslMechanism needs securityProtocol SASL_PLAINTEXT or SASL_SSL"
            )
        return self


class ResourceList(Spec):
    cpu: str | None = Field(default=None, description="CPU quantity, e.g. 500m.")
    memory: str | None = Field(default=None, description="Memory quantity, e.g. 256Mi.")


class Resources(Spec):
    requests: ResourceList = Field(default_factory=ResourceList, description="Requested resources.")
    limits: ResourceList = Field(default_factory=ResourceList, description="Resource limits.")


# Where the relays find a CA bundle for verifying MX certificates (a private CA).
class CABundleRef(Spec):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "has(self.secret) != has(self.configMap)",
                "tls.caBundle: name exactly one of secret or configMap",
            )
        )
    )

    secret: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="Secret in the pool's namespace.",
    )
    config_map: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="ConfigMap in the pool's namespace.",
    )
    key: str = Field(
        default="ca.crt",
        pattern=r"^[-._a-zA-Z0-9]+$",
        max_length=253,
        description="Key of the PEM bundle in it.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.secret is None) == (self.config_map is None):
            raise ValueError("tls.caBundle: name exactly one of secret or configMap")
        return self


# The CEL rules say what `tls_problem` says, so `kubectl apply` refuses it.
class TLS(TLSSettings):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!self.verify || self.mode in ['required', 'verify', 'dane']",
                "tls.verify: true contradicts modes none, disabled, opportunistic (they never "
                "verify) and mta-sts (each destination's policy decides); use mode: verify to "
                "require a certificate matching the MX name",
            ),
            (
                "!self.verify || self.mode != 'dane'",
                "tls.verify: true contradicts mode dane (its TLSA records decide what is "
                "verified, and how); drop verify, or use mode: verify for CA-verified TLS",
            ),
            (
                "!has(self.caBundle) || self.mode == 'verify' || self.mode == 'mta-sts' || "
                "(self.mode == 'required' && self.verify) || "
                f"(has(self.sites) && self.sites.exists(k, {_SITE_VERIFIES}))",
                "tls.caBundle is only used to verify certificates; use mode: verify or mta-sts "
                "(pool-wide or for a site)",
            ),
            (
                f"!has(self.sites) || !self.sites.exists(k, {_SITE_VERIFY_BAD})",
                "tls.sites: verify: true contradicts a site's mode (none, disabled, "
                "opportunistic, mta-sts or dane); use mode: verify to require a certificate "
                "matching the MX name, or drop verify",
                f"{_first_site(_SITE_VERIFY_BAD)} + ': verify: true contradicts mode ' + "
                f"self.sites[self.sites.filter(k, {_SITE_VERIFY_BAD})[0]].mode + "
                "'; use mode: verify to require a certificate matching the MX name, "
                "or drop verify'",
            ),
            (
                "!has(self.sites) || self.sites.all(k, !k.contains('.') || k.lowerAscii() == k)",
                "tls.sites: write each domain in lower case",
                f"{_first_site(_SITE_NOT_LOWER)} + ': write the domain in lower case'",
            ),
        )
    )
    ca_bundle: CABundleRef | None = Field(
        default=None,
        description=(
            "CA bundle (PEM) trusted besides the system's to verify MX certificates, from a "
            "Secret or ConfigMap mounted read-only into the relays; only with mode verify "
            "or mta-sts (where it also verifies the policy host's HTTPS certificate)."
        ),
    )

    @model_validator(mode="after")
    def _ca_needs_verify(self) -> Self:
        problem = self.problem(ca_bundle=self.ca_bundle is not None)
        if problem is not None:
            raise ValueError(problem)
        return self


class SendingPoolSpec(Spec):
    """Where mail leaves from: egress IPs, shaping, retries, TLS, DKIM, relays."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.warmup) || !has(self.warmup.schedule) || self.warmup.schedule.all(s, "
                "!has(s.groupLimits) || s.groupLimits.all(g, g.contains('.') || "
                "(has(self.domainGroups) && g in self.domainGroups)))",
                "warmup.schedule groupLimits name a domain group that is not defined "
                "in domainGroups and is not a site (a dotted name such as google.com)",
            ),
            (
                "!has(self.tls) || !has(self.tls.mode) || self.tls.mode != 'dane' "
                "|| has(self.dnsNameserver)",
                "tls.mode dane trusts the AD bit of the pool's resolver: set dnsNameserver "
                "to a DNSSEC-validating resolver (host:port, e.g. a node-local unbound)",
            ),
            (
                "!has(self.tls) || !has(self.tls.sites) || has(self.dnsNameserver) || "
                "self.tls.sites.all(k, self.tls.sites[k].mode != 'dane')",
                "tls.sites: mode dane trusts the AD bit of the pool's resolver: set "
                "dnsNameserver to a DNSSEC-validating resolver (host:port)",
                "'tls.sites.' + self.tls.sites.filter(k, self.tls.sites[k].mode == 'dane')[0] "
                "+ '.mode dane trusts the AD bit of the resolver of the pool: set dnsNameserver "
                "to a DNSSEC-validating resolver (host:port, e.g. a node-local unbound)'",
            ),
            (
                "!has(self.tls) || !has(self.tls.sites) || self.tls.sites.all(k, "
                "k.contains('.') || (has(self.domainGroups) && k in self.domainGroups))",
                "tls.sites names a domain group not defined in domainGroups",
                "'tls.sites.' + self.tls.sites.filter(k, !k.contains('.') && "
                "!(has(self.domainGroups) && k in self.domainGroups))[0] + ' names no domain "
                "group defined in domainGroups and is not a domain name: define the group, "
                "or write the recipient domain'",
            ),
        )
    )

    replicas: int = Field(default=1, ge=0, le=100, description="Relay replicas.")
    image: str = Field(
        default="", description="Relay image (unset: the chart's image.repository and tag)."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets for pulling the relay image (unset: the chart's imagePullSecrets).",
    )
    resources: Resources = Field(
        default_factory=Resources, description="Relay container resources."
    )
    kafka: KafkaSpec = Field(
        default_factory=KafkaSpec, description="Kafka cluster and topics of the pool."
    )
    egress_ips: list[EgressIP] = Field(
        alias="egressIPs",
        min_length=1,
        max_length=256,
        description="Egress IPs with their HELO names.",
        # a list keyed by address: the apiserver refuses the same address twice
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["address"],
        },
    )
    warmup: Warmup = Field(
        default_factory=Warmup, description="IP warm-up schedule and safeguards."
    )
    domain_groups: dict[str, list[str]] = Field(
        default_factory=dict,
        max_length=MAX_DOMAIN_GROUPS,
        description="Group name -> destination domain patterns (fnmatch).",
    )
    throttles: Throttles = Field(default_factory=Throttles, description="Per-destination shaping.")
    retry: Retry = Field(default_factory=Retry, description="Retry schedule of deferred mail.")
    tls: TLS = Field(default_factory=TLS, description="TLS policy towards MX hosts.")
    dkim: DKIM | None = Field(default=None, description="DKIM signing; unset means unsigned.")
    feedback: Feedback | None = Field(
        default=None,
        description="VERP Return-Path and the feedback receiver; unset: MAIL FROM is the sender.",
    )
    unsubscribe: PoolUnsubscribe | None = Field(
        default=None,
        description=(
            "The pool's one-click unsubscribe endpoint: a Campaign without an unsubscribe "
            "url of its own gets this one, with a token signed for each recipient."
        ),
    )
    submission: PoolSubmission | None = Field(
        default=None,
        description=(
            "SMTP submission endpoint for applications (587/465, AUTH over TLS only); "
            "unset: applications write delivery records to Kafka themselves."
        ),
    )
    routes: dict[str, list[Route]] = Field(
        default_factory=dict,
        description="Static next hops per domain instead of MX (tests, smart hosts).",
    )
    dns_nameserver: str | None = Field(
        default=None,
        pattern=r"^[^:]+:[0-9]+$",
        description="Resolver host:port instead of the pod's.",
    )
    smtp_port: int = Field(default=25, ge=1, le=65535, description="Port of MX hosts.")
    # >= 1024: the relay runs as non-root and cannot bind privileged ports
    metrics_port: int = Field(default=9090, ge=1024, le=65535, description="Relay metrics port.")
    host_network: bool = Field(
        default=False,
        description=(
            "Run relays in the node's network namespace, so they can bind egress IPs "
            "configured on the node; the cluster policy must allow it for the namespace."
        ),
    )
    delivery: DeliveryPolicy = Field(
        default_factory=DeliveryPolicy,
        description="SMTP stage timeouts, tarpit budget, destination policy.",
    )
    bounces: BounceRules = Field(
        default_factory=BounceRules,
        description=(
            "Bounce classification: rules tried before the packaged defaults (the first "
            "match gives the class) and when a class suppresses the address."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        # What the relay config would refuse is refused here, so the handler marks
        # the pool Ready=False (InvalidSpec) instead of failing to render its config.
        check_pool(self.egress_ips, self.domain_groups, self.warmup.schedule)
        check_routes(self.routes, self.delivery)
        problem = dane_resolver_problem(self.tls, self.dns_nameserver) or tls_sites_problem(
            self.tls, self.domain_groups
        )
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _operator_defaults(self, info: ValidationInfo) -> Self:
        # Unset fields take the operator's defaults (the chart's values), given
        # as validation context by the caller that read them (`defaults`).
        d = (info.context or {}).get(CONTEXT_KEY) or PoolDefaults()
        bootstrap = self.kafka.bootstrap_servers or d.kafka_bootstrap_servers
        if not bootstrap:
            raise ValueError(
                "kafka.bootstrapServers is not set and the operator has no default "
                "(chart value kafka.bootstrapServers)"
            )
        secrets = self.image_pull_secrets or [
            LocalObjectReference(name=n) for n in d.image_pull_secrets
        ]
        return self.model_copy(
            update={
                "image": self.image or d.image,
                "image_pull_secrets": secrets,
                "kafka": self.kafka.model_copy(update={"bootstrap_servers": bootstrap}),
            }
        )


# --- Campaign ------------------------------------------------------------------


class Sender(Spec):
    address: str = Field(pattern=ADDRESS, description="Envelope sender and From: address.")
    name: str | None = Field(default=None, max_length=200, description="Display name in From:.")


class Variant(Spec):
    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Variant name, e.g. a or b.")
    weight: int = Field(ge=0, le=100, description="Share of recipients, in percent.")
    subject: str | None = Field(
        default=None, max_length=998, description="Subject template for this variant."
    )
    text: str | None = Field(
        default=None,
        max_length=MAX_TEMPLATE_CHARS,
        description="Text body template for this variant.",
    )
    html: str | None = Field(
        default=None,
        max_length=MAX_TEMPLATE_CHARS,
        description="HTML body template for this variant.",
    )


class Recipient(Spec):
    address: str = Field(pattern=ADDRESS, description="Recipient address.")
    time_zone: str | None = Field(default=None, pattern=TIME_ZONE, description="Recipient's zone.")
    merge: dict[str, str] = Field(default_factory=dict, description="Merge fields for templates.")


class AudienceFormat(enum.StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


class ConfigMapAudience(Spec):
    # A name, never a path: `team-b/x` or `../../team-b/x` named another
    # namespace's ConfigMap through the URL (the API server refused it, 403).
    name: str = Field(
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="ConfigMap in the campaign's namespace (a name, not a path).",
    )
    key: str = Field(
        default="audience.csv",
        description="Key of the audience; a key ending in .gz is read gzipped from binaryData.",
    )
    format: AudienceFormat = Field(
        default=AudienceFormat.CSV,
        description="csv (header row: address, timeZone, other columns = merge fields) or jsonl.",
    )


class OnInvalid(enum.StrEnum):
    """What a problem row of the audience does (checked before anything is sent)."""

    FAIL = "Fail"  # the campaign fails and nothing is sent
    SKIP = "Skip"  # the row is left out and counted in status.audience


class Audience(Spec):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "has(self.inline) != has(self.configMapRef)",
                "audience needs exactly one of inline or configMapRef",
            )
        )
    )
    inline: list[Recipient] | None = Field(
        default=None, max_length=1000, description="Recipients listed in the Campaign itself."
    )
    config_map_ref: ConfigMapAudience | None = Field(
        default=None, description="Recipients in a ConfigMap (large audiences)."
    )
    on_invalid: OnInvalid = Field(
        default=OnInvalid.FAIL,
        description=(
            "A row with a bad address, unknown time zone or a merge field its template "
            "needs: Fail the campaign before anything is sent, or Skip and count it."
        ),
    )


class Weekday(enum.StrEnum):
    MON = "Mon"
    TUE = "Tue"
    WED = "Wed"
    THU = "Thu"
    FRI = "Fri"
    SAT = "Sat"
    SUN = "Sun"


class SendWindow(Spec):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.start != self.end", "send window: start must differ from end")
        )
    )
    days: list[Weekday] = Field(min_length=1, max_length=7, description="Days the window is open.")
    start: str = Field(pattern=CLOCK, description="Opening time, HH:MM, recipient's local time.")
    end: str = Field(
        pattern=CLOCK,
        description="Closing time, HH:MM, local; before start means the next day (22:00-06:00).",
    )


class UnsubscribeScope(enum.StrEnum):
    NAMESPACE = "Namespace"  # no more mail from any campaign of the namespace
    LIST = "List"  # no more mail of the campaigns naming the same list


class Unsubscribe(Spec):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.scope) || self.scope != 'List' || has(self.list)",
                "unsubscribe scope List needs a list name",
            )
        )
    )
    url: str | None = Field(
        default=None,
        pattern=r"^https://",
        description=(
            "Template of your own one-click https URL; unset: the pool's endpoint "
            "(SendingPool spec.unsubscribe)."
        ),
    )
    mailto: str | None = Field(default=None, pattern=ADDRESS, description="Unsubscribe mailbox.")
    one_click: bool = Field(default=True, description="Add List-Unsubscribe-Post (RFC 8058).")
    scope: UnsubscribeScope = Field(
        default=UnsubscribeScope.NAMESPACE,
        description="What an unsubscribe through the pool's endpoint stops: Namespace or List.",
    )
    list: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="The mailing list this campaign is sent to (scope List).",
    )


class ComplaintSettings(Spec):
    """When complaints pause a campaign (`complaints` module)."""

    pause_at_percent: float = Field(
        default=0.3,  # Gmail's and Yahoo's bulk-sender requirement (2024)
        gt=0,
        le=100,
        description="Pause the campaign when complaints reach this share of delivered, in %.",
    )
    warn_at_percent: float = Field(
        default=0.1,  # what Gmail asks bulk senders to stay under
        gt=0,
        le=100,
        description="Condition ComplaintRateHigh from this share of delivered, in %.",
    )
    min_delivered: int = Field(
        default=100,  # one complaint in 100 is 1%: below that a rate is noise
        ge=1,
        description="Deliveries needed before the rate may pause the campaign.",
    )


class CampaignSpec(Spec):
    """What to send: sender, templates, audience, schedule, variants.

    Once fan-out has started only suspend applies; an edit of any other field is
    refused (condition SpecAccepted=False, reason EditRefusedAfterFanout) until
    reverted. A Failed campaign takes any edit and resumes.
    """

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("has(self.text) || has(self.html)", "a campaign needs a text or an html template"),
            (
                "!has(self.variants) || size(self.variants) == 0 || "
                "self.variants.map(v, v.weight).sum() == 100",
                "variant weights must sum to 100",
            ),
        )
    )
    pool_ref: str = Field(
        pattern=DNS_LABEL, max_length=253, description="SendingPool in this namespace."
    )
    from_: Sender = Field(alias="from", description="Sender.")
    reply_to: str | None = Field(default=None, pattern=ADDRESS, description="Reply-To address.")
    # 998: RFC 5322 2.1.1 line limit
    subject: str = Field(min_length=1, max_length=998, description="Subject template (Jinja2).")
    text: str | None = Field(
        default=None, max_length=MAX_TEMPLATE_CHARS, description="Text body template (Jinja2)."
    )
    html: str | None = Field(
        default=None,
        max_length=MAX_TEMPLATE_CHARS,
        description="HTML body template (Jinja2, autoescaped).",
    )
    variants: list[Variant] = Field(
        default_factory=list, max_length=10, description="A/B variants by weight."
    )
    audience: Audience = Field(description="Who receives it.")
    start_at: str | None = Field(
        default=None,
        description="RFC 3339 time before which nothing is sent.",
        json_schema_extra={"format": "date-time"},
    )
    send_windows: list[SendWindow] = Field(
        default_factory=list, max_length=14, description="When sending is allowed, recipient time."
    )
    time_zone: str = Field(
        default="UTC", pattern=TIME_ZONE, description="Zone of recipients without their own."
    )
    unsubscribe: Unsubscribe | None = Field(
        default=None,
        description=(
            "Unsubscribe headers and link; unset: the pool's one-click endpoint when it has one."
        ),
    )
    complaints: ComplaintSettings = Field(
        default_factory=ComplaintSettings,
        description="Complaint rate that warns and that pauses the campaign (applies any time).",
    )
    suspend: bool = Field(default=False, description="Pause sending; resume by setting false.")
