"""What TLS a delivery attempt had, as the relay reports it in events and metrics.

Every value comes from a fixed set (issue 22: metric labels must never come
from a record or a reply), so the same object labels metrics: the applied
mode, what the destination published (an MTA-STS mode), the protocol
OpenSSL negotiated or `clear`, whether the certificate was verified, and why
not as an RFC 8460 (TLS-RPT) result type, so the counts can become TLS-RPT
aggregate reports without a translation table.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field


class TLSFailure(enum.StrEnum):
    """Why a session was not (verified) TLS: RFC 8460 section 4.3 result types,
    plus `mx-mismatch` (an MX outside the MTA-STS policy: RFC 8461 section 4.1;
    RFC 8460 has no type for it) and `starttls-failed` (the handshake broke off)."""

    STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
    CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
    CERTIFICATE_EXPIRED = "certificate-expired"
    CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
    VALIDATION_FAILURE = "validation-failure"
    STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
    STS_POLICY_INVALID = "sts-policy-invalid"
    STS_WEBPKI_INVALID = "sts-webpki-invalid"
    TLSA_INVALID = "tlsa-invalid"  # DANE: the certificate matches no usable TLSA record
    MX_MISMATCH = "mx-mismatch"
    STARTTLS_FAILED = "starttls-failed"


CLEAR = "clear"  # `protocol` of a session without TLS
# What OpenSSL's `SSLObject.version()` says; anything else is reported as "other".
PROTOCOLS = frozenset({"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", CLEAR})


class TLSOutcome(BaseModel):
    """The TLS of one delivery attempt to one site (on each event of it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: str = Field(max_length=16, description="the pool's TLS mode applied to this site")
    policy: str | None = Field(
        default=None,
        max_length=16,
        description="what the destination published: an MTA-STS mode (enforce, testing, none)"
        " or absent when it has none",
    )
    protocol: str = Field(
        default=CLEAR, max_length=16, description="TLSv1.2, TLSv1.3, ... or clear"
    )
    verified: bool = Field(default=False, description="certificate checked for the MX name")
    failure: TLSFailure | None = Field(
        default=None, description="why it is not verified TLS, or what testing mode reported"
    )

    def labels(self) -> tuple[str, str, str, str, str]:
        """(mode, policy, protocol, verified, failure) for a metric: bounded values."""
        protocol = self.protocol if self.protocol in PROTOCOLS else "other"
        return (
            self.mode,
            self.policy or "absent",
            protocol,
            "true" if self.verified else "false",
            self.failure.value if self.failure else "none",
        )
