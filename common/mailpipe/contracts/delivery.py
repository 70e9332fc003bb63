"""How a pool delivers: SMTP stage timeouts, the tarpit budget, the destination policy.

Spec types shared by the SendingPool spec (`spec.delivery`) and the relay
config (`delivery`), like `policy`'s: what the CRD schema accepts the relay
accepts (issue 10, Deliver 3 and 5; ARCHITECTURE.md, "Replies decide",
"No head-of-line blocking" and "Least privilege"). The address checks are pure, so the relay config
refuses a static route the policy forbids when it is parsed, and the relay applies the same
rule to every address DNS gives or it connects to.

Classes used as spec fields carry comments, not docstrings (see `policy`).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints

from .policy import Route, Spec

# RFC 5321 4.5.3.2 gives no connect timeout; Postfix's smtp_connect_timeout is 30 s.
CONNECT_TIMEOUT_SECONDS = 30.0
MAX_STAGE_TIMEOUT_SECONDS = 3600.0  # an hour on one SMTP stage is a typo, not a policy
# A healthy MX answers each stage within seconds; an attempt still unfinished after
# this long while the read window is full is holding other domains back (issue 10,
# finding 5). Under the RFC's stage timeouts so a tarpit is spilled before they fire.
STALL_BUDGET_SECONDS = 60.0
_CIDR = r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$"


def _network(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"not a network in CIDR notation: {text!r}") from exc
    return text


Network = Annotated[str, StringConstraints(pattern=_CIDR), AfterValidator(_network)]


def _stage_timeout(default: float, stage: str) -> Any:
    return Field(default=default, gt=0, le=MAX_STAGE_TIMEOUT_SECONDS, description=stage)


# How long the relay waits for each SMTP stage, RFC 5321 4.5.3.2 (its minimums are
# the defaults); a stage that times out defers its recipients naming the stage.
class SMTPTimeouts(Spec):
    connect_seconds: float = _stage_timeout(CONNECT_TIMEOUT_SECONDS, "TCP connect to an MX.")
    greeting_seconds: float = _stage_timeout(300, "The 220 greeting (RFC 5321 4.5.3.2.1).")
    ehlo_seconds: float = _stage_timeout(300, "EHLO and STARTTLS replies.")
    mail_seconds: float = _stage_timeout(300, "MAIL FROM reply (4.5.3.2.2).")
    rcpt_seconds: float = _stage_timeout(300, "Each RCPT TO reply (4.5.3.2.3).")
    data_init_seconds: float = _stage_timeout(120, "The 354 reply to DATA (4.5.3.2.4).")
    data_block_seconds: float = _stage_timeout(180, "Each block of the message sent (4.5.3.2.5).")
    data_termination_seconds: float = _stage_timeout(
        600, "The reply after the final dot (4.5.3.2.6)."
    )


# Where and how long the relay delivers: stage timeouts, the tarpit budget, and
# the destination policy (which addresses it may connect to at all).
class DeliveryPolicy(Spec):
    timeouts: SMTPTimeouts = Field(
        default_factory=SMTPTimeouts, description="Per-stage SMTP timeouts, RFC 5321 4.5.3.2."
    )
    stall_budget_seconds: float = Field(
        default=STALL_BUDGET_SECONDS,
        gt=0,
        description=(
            "Tarpit budget: while the read window is full, a domain whose oldest attempt"
            " has run this long has its attempts cut (deferred) and its queued records"
            " postponed, so it cannot hold other domains back."
        ),
    )
    allow_private_destinations: bool = Field(
        default=False,
        description=(
            "Deliver to loopback, private, link-local and unspecified addresses"
            " (tests, smart hosts on the cluster network). Off: such MX hosts are refused."
        ),
    )
    allowed_networks: list[Network] = Field(
        default_factory=list,
        max_length=64,
        description="Networks (CIDR) allowed even when private, e.g. a smart host's.",
    )


def forbidden_reason(address: str) -> str | None:
    """Why an address is internal (off limits for mail from a cluster), or None."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, hit in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-global", not ip.is_global),  # shared address space 100.64/10, TEST-NETs, ...
    ):
        if hit:
            return kind
    return None


def destination_refusal(address: str, policy: DeliveryPolicy) -> str | None:
    """Why the pool's destination policy refuses to connect to `address`, or None."""
    if policy.allow_private_destinations:
        return None
    kind = forbidden_reason(address)
    if kind is None:
        return None
    ip = ipaddress.ip_address(address)
    if any(ip in ipaddress.ip_network(n, strict=False) for n in policy.allowed_networks):
        return None
    return (
        f"a {kind} address: destination not allowed by policy"
        " (delivery.allowPrivateDestinations or delivery.allowedNetworks)"
    )


def check_routes(routes: dict[str, list[Route]], policy: DeliveryPolicy) -> None:
    """A static route to an address the policy refuses is a mistake in the pool:
    refused when the config (or the SendingPool) is parsed, naming the route,
    rather than bouncing every record at the last step."""
    for domain, hops in routes.items():
        for hop in hops:
            try:
                ipaddress.ip_address(hop.host)
            except ValueError:
                continue  # a name: checked where it is resolved, at connect time
            refusal = destination_refusal(hop.host, policy)
            if refusal is not None:
                raise ValueError(f"routes[{domain}] host {hop.host} is {refusal}")
