"""How a Kafka client proves who it is: the one typed model for every client.

The relays, the operator and the kubectl plugin all log in to Kafka the same
way, so the broker's ACLs can tell one tenant's principal from another's
(issue 11; README, "Multi-tenancy and security"). This model is what their
configuration says; `mailpipe.kafkakit.client_options` turns it into client
arguments, reading the files it names.

Secrets never appear here as values: the password (and the user name, when
it comes from a Secret) is a *file path*, the file being a key of a mounted
Secret. So a relay config (a ConfigMap) or the operator's environment can be
printed, diffed and logged without leaking a credential. Pure: nothing is
read here; a missing file is reported by whoever reads it, naming the file.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ENV_CA_FILE",
    "ENV_CERT_FILE",
    "ENV_KEY_FILE",
    "ENV_PASSWORD_FILE",
    "ENV_SASL_MECHANISM",
    "ENV_SECURITY_PROTOCOL",
    "ENV_USERNAME",
    "ENV_USERNAME_FILE",
    "KafkaConnection",
    "KafkaSecurity",
    "SaslMechanism",
    "SecurityProtocol",
    "security_from_env",
]


class SecurityProtocol(enum.StrEnum):
    """Kafka's `security.protocol`: transport encryption and whether SASL is spoken."""

    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"

    @property
    def sasl(self) -> bool:
        return self in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)

    @property
    def tls(self) -> bool:
        return self in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)


class SaslMechanism(enum.StrEnum):
    """The SASL mechanisms a user name and password log in with. SCRAM never
    sends the password; PLAIN does, so PLAIN belongs with SASL_SSL only in
    production (not enforced: a loopback dev broker is a legitimate use)."""

    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class KafkaSecurity(BaseModel):
    """A Kafka client's identity and transport: PLAINTEXT (the default) needs
    nothing; SASL_* a mechanism, a user name and a password file; SSL a CA
    file unless the system's trust store will do, and optionally a client
    certificate and key (mutual TLS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: SecurityProtocol = Field(
        default=SecurityProtocol.PLAINTEXT,
        description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    )
    sasl_mechanism: SaslMechanism | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only)"
    )
    username: str | None = Field(default=None, description="SASL user name, given inline")
    username_file: str | None = Field(
        default=None, description="file holding the SASL user name (a mounted Secret's key)"
    )
    password_file: str | None = Field(
        default=None, description="file holding the SASL password (a mounted Secret's key)"
    )
    ca_file: str | None = Field(
        default=None, description="PEM CA bundle the broker's certificate is checked against"
    )
    cert_file: str | None = Field(default=None, description="PEM client certificate (mutual TLS)")
    key_file: str | None = Field(default=None, description="PEM client private key (mutual TLS)")

    @model_validator(mode="after")
    def _check(self) -> KafkaSecurity:
        p = self.protocol
        if p.sasl:
            if self.sasl_mechanism is None:
                raise ValueError(f"security protocol {p} needs a SASL mechanism")
            if self.username is None and self.username_file is None:
                raise ValueError(f"security protocol {p} needs a user name (or its file)")
            if self.password_file is None:
                raise ValueError(f"security protocol {p} needs a password file")
        elif self.sasl_mechanism or self.username or self.username_file or self.password_file:
            raise ValueError(
                f"SASL settings given but security protocol is {p}: use SASL_PLAINTEXT or SASL_SSL"
            )
        if self.username is not None and self.username_file is not None:
            raise ValueError("give the SASL user name inline or as a file, not both")
        if not p.tls and (self.ca_file or self.cert_file or self.key_file):
            raise ValueError(f"TLS files given but security protocol is {p}: use SSL or SASL_SSL")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs its key and a key its certificate")
        return self

    def files(self) -> dict[str, str]:
        """Field -> path of every file this identity needs (for checks and messages)."""
        names = ("username_file", "password_file", "ca_file", "cert_file", "key_file")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def __str__(self) -> str:  # never a secret: what, not the password
        who = self.username or (self.username_file and f"user from {self.username_file}")
        return f"{self.protocol}" + (f" {self.sasl_mechanism} as {who}" if who else "")


class KafkaConnection(BaseModel):
    """One Kafka cluster as one identity sees it: bootstrap servers and security.

    Hashable, so clients shared per cluster (the operator's producers, admin
    clients and events readers) are shared per cluster *and* identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: str
    security: KafkaSecurity = Field(default_factory=KafkaSecurity)

    def __str__(self) -> str:  # log lines name the cluster as before
        return self.bootstrap_servers


# The operator's and the kubectl plugin's identity, from their environment
# (the chart sets these; the password itself stays in the mounted Secret).
ENV_SECURITY_PROTOCOL = "MAILPIPE_KAFKA_SECURITY_PROTOCOL"
ENV_SASL_MECHANISM = "MAILPIPE_KAFKA_SASL_MECHANISM"
ENV_USERNAME = "MAILPIPE_KAFKA_USERNAME"
ENV_USERNAME_FILE = "MAILPIPE_KAFKA_USERNAME_FILE"
ENV_PASSWORD_FILE = "MAILPIPE_KAFKA_PASSWORD_FILE"
ENV_CA_FILE = "MAILPIPE_KAFKA_CA_FILE"
ENV_CERT_FILE = "MAILPIPE_KAFKA_CERT_FILE"
ENV_KEY_FILE = "MAILPIPE_KAFKA_KEY_FILE"
_ENV_FIELDS = MappingProxyType(
    {
        ENV_SECURITY_PROTOCOL: "protocol",
        ENV_SASL_MECHANISM: "sasl_mechanism",
        ENV_USERNAME: "username",
        ENV_USERNAME_FILE: "username_file",
        ENV_PASSWORD_FILE: "password_file",
        ENV_CA_FILE: "ca_file",
        ENV_CERT_FILE: "cert_file",
        ENV_KEY_FILE: "key_file",
    }
)


def security_from_env(env: Mapping[str, str]) -> KafkaSecurity:
    """The identity the `MAILPIPE_KAFKA_*` variables describe (unset or empty:
    the field's default); `ValueError` naming the variable's field if invalid."""
    given = {field: env[var].strip() for var, field in _ENV_FIELDS.items() if env.get(var, "")}
    return KafkaSecurity.model_validate(given)
