"""The TLS section of a SendingPool's status, counted from the relays' events.

Each event carries the TLS of its attempt (`Event.tls`: mode applied, what the
destination published, protocol, verified or why not). An operator reading
`kubectl get sendingpool -o yaml` wants to know, per site, whether mail goes
verified, unverified or in clear, and what failed last: this tally keeps
that, bounded (`MAX_TRACKED_SITES` domains counted, the busiest
`MAX_REPORTED_SITES` reported), since the domains come from the audience.
Pure: the events reader feeds `observe`, the status timer reads `report`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailpipe.contracts.tls_outcome import CLEAR
from mailpipe.contracts.wire import Event

MAX_TRACKED_SITES = 1000  # domains counted one by one; later ones share OTHER_SITES
MAX_REPORTED_SITES = 10  # the busiest, in the status: it is read by people
OTHER_SITES = "(other)"


@dataclass
class _Site:
    recipients: int = 0
    verified: int = 0
    clear: int = 0
    policy: str | None = None
    protocol: str = CLEAR
    failure: str | None = None  # the last attempt's


class TLSTally:
    """Per destination domain: recipients tried, how many over verified TLS and
    how many in clear, and the last attempt's policy, protocol and failure."""

    def __init__(self) -> None:
        self._sites: dict[str, _Site] = {}

    def observe(self, event: Event) -> None:
        tls = event.tls
        if tls is None:
            return
        domain = event.domain
        if domain not in self._sites and len(self._sites) >= MAX_TRACKED_SITES:
            domain = OTHER_SITES
        site = self._sites.setdefault(domain, _Site())
        site.recipients += 1
        site.verified += tls.verified
        site.clear += tls.protocol == CLEAR
        site.policy, site.protocol = tls.policy, tls.protocol
        site.failure = tls.failure.value if tls.failure else None

    def report(self) -> dict[str, Any]:
        """The status section: totals and the busiest sites (no None values: the
        API server drops them, and the next comparison would always differ)."""
        busiest = sorted(self._sites.items(), key=lambda kv: (-kv[1].recipients, kv[0]))
        sites = [
            {
                "domain": domain,
                "recipients": s.recipients,
                "verified": s.verified,
                "clear": s.clear,
                "lastProtocol": s.protocol,
                **({"policy": s.policy} if s.policy else {}),
                **({"lastFailure": s.failure} if s.failure else {}),
            }
            for domain, s in busiest[:MAX_REPORTED_SITES]
        ]
        return {
            "recipients": sum(s.recipients for s in self._sites.values()),
            "verified": sum(s.verified for s in self._sites.values()),
            "clear": sum(s.clear for s in self._sites.values()),
            "sites": sites,
        }


def status_update(tally: TLSTally | None, stored: Any) -> dict[str, Any] | None:
    """The `tls` section to write, or None: nothing counted yet (200 quiet pools
    write nothing) or the stored section already says it."""
    if tally is None:
        return None
    report = tally.report()
    if not report["recipients"] or report == stored:
        return None
    return report
