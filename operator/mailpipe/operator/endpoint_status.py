"""Whether a pool's endpoints are available, read from their Deployments' status: pure.

Besides its relays, a pool runs the endpoints its spec asks for: the feedback
receiver (`spec.feedback`), the one-click unsubscribe endpoint
(`spec.unsubscribe`) and the submission endpoint (`spec.submission`), each a
Deployment the operator renders (`pool.build_children`). The pool's Ready
follows the relays only, on purpose: mail still goes out while the unsubscribe
endpoint is down, and a pool that said not Ready for it would hold every
`kubectl wait` and campaign on it. So an endpoint's availability gets its own
condition, `EndpointsReady`, and `status.endpoints` (per endpoint, desired and
available, like `status.relays`); `handlers.pool` writes them and announces an
endpoint that was available and no longer is with a Warning Event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CONDITION = "EndpointsReady"
AVAILABLE = "EndpointsAvailable"  # reason: every rendered endpoint is available
NONE = "NoEndpoints"  # reason: the spec asks for no endpoint
UNAVAILABLE = "EndpointsUnavailable"  # reason: more than one endpoint is not available
COMPONENT_LABEL = "app.kubernetes.io/component"
RELAY = "relay"  # the one component that is not an endpoint


@dataclass(frozen=True)
class Endpoint:
    """One endpoint Deployment's availability, as its controller reports it in status."""

    desired: int  # spec.replicas as rendered (what the operator asks for)
    available: int  # status.availableReplicas (0 before the controller saw it)

    @classmethod
    def of(cls, desired: int, live: Mapping[str, Any] | None) -> Endpoint:
        """From the live Deployment as JSON (None: not there, e.g. deleted by hand
        and not yet put back)."""
        status = (live or {}).get("status") or {}
        return cls(desired, int(status.get("availableReplicas") or 0))

    @property
    def ready(self) -> bool:
        return self.available >= self.desired

    def as_status(self) -> dict[str, int]:
        return {"desired": self.desired, "available": self.available}


def endpoint_deployments(children: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Component name (feedback, unsubscribe, submission) -> its rendered Deployment."""
    out = {}
    for child in children:
        labels = (child.get("metadata") or {}).get("labels") or {}
        component = labels.get(COMPONENT_LABEL)
        if child.get("kind") == "Deployment" and component and component != RELAY:
            out[str(component)] = child
    return out


def _unavailable_reason(names: list[str]) -> str:
    """`SubmissionUnavailable` for one endpoint, so the reason alone names it."""
    return f"{names[0].capitalize()}Unavailable" if len(names) == 1 else UNAVAILABLE


def decide(endpoints: Mapping[str, Endpoint]) -> tuple[bool, str, str]:
    """(status, reason, message) of the EndpointsReady condition.

    The message names every endpoint with its count, the unavailable ones
    first, so `kubectl describe sp` says which one to look at."""
    if not endpoints:
        return True, NONE, "the spec asks for no endpoint"
    names = sorted(endpoints)
    down = [n for n in names if not endpoints[n].ready]
    counts = {n: f"{n} {endpoints[n].available}/{endpoints[n].desired}" for n in names}
    if not down:
        return True, AVAILABLE, ", ".join(counts[n] for n in names) + " available"
    message = "not available: " + ", ".join(counts[n] for n in down)
    up = [counts[n] for n in names if n not in down]
    if up:
        message += "; available: " + ", ".join(up)
    return False, _unavailable_reason(down), message


def status_patch(
    old: Mapping[str, Any] | None, endpoints: Mapping[str, Endpoint]
) -> dict[str, Any]:
    """`status.endpoints` as a merge patch: an endpoint whose spec field was
    removed is set to null (a merge patch keeps keys it does not name); equal
    to `old` when nothing changed, so an unchanged world writes nothing."""
    new: dict[str, Any] = {n: e.as_status() for n, e in sorted(endpoints.items())}
    gone = {n: None for n in old or {} if n not in new}
    return {**new, **gone}


def lost(old: Mapping[str, Any] | None, endpoints: Mapping[str, Endpoint]) -> list[str]:
    """Endpoints that were available (per the `status.endpoints` written before)
    and are not now: what a Warning Event announces. One still starting, or one
    removed from the spec, is not lost."""
    was_ready = {
        n
        for n, e in (old or {}).items()
        if isinstance(e, Mapping) and int(e.get("available") or 0) >= int(e.get("desired") or 0)
    }
    return sorted(n for n, e in endpoints.items() if n in was_ready and not e.ready)
