"""What the pool's TLS mode asks of one connection: a small pure table, no IO.

Each mode has one meaning (issue 22), here and only here, so the transport
asks instead of comparing modes itself:

    mode           STARTTLS        certificate              STARTTLS absent / failed
    none           never           -                        clear
    opportunistic  when offered    never checked            clear (RFC 3207 4.1)
    required       always          never checked            defer 4.7.5, nothing sent
    verify         always          CA chain + MX name       defer 4.7.5, nothing sent
    dane           per MX host: its DNSSEC-validated TLSA records decide (`dane`'s table)
    mta-sts        per the destination's policy (`mta_sts.sts_plan`): `verify` to
                   its MX hosts where it says enforce; where it says testing, a
                   certificate is checked and a failure reported, then sent
                   unverified (verify and clear_on_failure both set); otherwise
                   `opportunistic`

A pool's `tls.sites` override the mode per recipient domain or domain group
(`destination_plan`). `required` with `verify: true` is `verify`, `disabled` is `none`
(`TLSSettings.applied`). Only `opportunistic` ever remembers a host whose
STARTTLS failed and goes to it in clear for a while (`clear_until`): a mode
that verifies never does, so a fixed certificate is used on the next attempt.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from mailpipe.contracts.config import RelayConfig, TLSMode, TLSSettings, TLSSite


@dataclass(frozen=True)
class TLSPlan:
    """What one connection does about TLS under a mode."""

    mode: TLSMode  # the applied mode: none, opportunistic, required, verify, dane or mta-sts
    starttls: bool  # issue STARTTLS when the server offers it
    verify: bool  # the certificate must chain to a trusted CA and match the MX name
    clear_on_failure: bool  # STARTTLS absent or failed: deliver in clear (else defer)

    def starttls_now(self, clear_until: float, now: float) -> bool:
        """Whether to try STARTTLS on a new connection: an opportunistic one skips it
        while the host's last failure is remembered (`clear_until`, monotonic)."""
        if self.clear_on_failure and clear_until > now:
            return False
        return self.starttls


def plan(settings: TLSSettings | TLSSite) -> TLSPlan:
    """The plan of the pool's TLS settings or a site's (see the table in the module doc)."""
    mode = settings.applied
    if mode is TLSMode.NONE:
        return TLSPlan(mode, starttls=False, verify=False, clear_on_failure=True)
    if mode is TLSMode.OPPORTUNISTIC:
        return TLSPlan(mode, starttls=True, verify=False, clear_on_failure=True)
    if mode is TLSMode.MTA_STS:  # a destination without a policy; see `mta_sts.sts_plan`
        return TLSPlan(mode, starttls=True, verify=False, clear_on_failure=True)
    if mode is TLSMode.REQUIRED:
        return TLSPlan(mode, starttls=True, verify=False, clear_on_failure=False)
    if mode is TLSMode.DANE:  # the strictest; the transport asks `dane` per MX host
        return TLSPlan(mode, starttls=True, verify=False, clear_on_failure=False)
    return TLSPlan(TLSMode.VERIFY, starttls=True, verify=True, clear_on_failure=False)


def destination_plan(config: RelayConfig, domain: str) -> TLSPlan:
    """The plan for mail to `domain`: its site's override if the pool has one
    (`tls.sites`: the domain's, else its group's), else the pool's; under
    mta-sts or dane the transport then asks the destination's policy or the MX
    host's TLSA records."""
    return plan(config.tls_for(domain))


def client_context(tls_plan: TLSPlan, ca_file: str | None) -> tuple[ssl.SSLContext, str | None]:
    """The one client context of a relay (loading CAs per connection is costly):
    the system's trust store plus the pool's CA bundle, checked only when the
    mode verifies; and why the bundle could not be loaded, if it could not.

    An unreadable bundle adds no CA rather than failing the relay: a mode that
    verifies still never sends in clear, and a certificate from the private CA
    is refused, the deferral naming the bundle's problem."""
    context = ssl.create_default_context()
    problem = None
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            problem = f"CA bundle {ca_file} not loaded: {exc}"
    if not tls_plan.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context, problem
