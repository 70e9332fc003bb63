"""Kubernetes-style status conditions, shared by the SendingPool and Campaign handlers.

Conditions follow the API conventions (`type`, `status` "True"/"False",
`reason`, `message`, `observedGeneration`, `lastTransitionTime`);
`merge_conditions` keeps a condition's transition time while its status holds,
so `kubectl describe` shows when something last changed, not when it was last
reconciled.
"""

from __future__ import annotations

import datetime as dt
from typing import Any


def now_iso() -> str:
    """The current time as an RFC 3339 UTC timestamp, to the second."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str, status: bool, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now_iso(),
    }


def merge_conditions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep lastTransitionTime when a condition's status did not change."""
    previous = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        p = previous.get(c["type"])
        if p is not None and p.get("status") == c["status"]:
            c = {**c, "lastTransitionTime": p.get("lastTransitionTime", c["lastTransitionTime"])}
        out.append(c)
    return out
