"""Pure: where a live child of a pool differs from what the operator rendered.

The relay Deployment's drift is `pool.drifted` on its spec (the apiserver
defaults many of its fields). The other children are compared here, for
`handlers.children`: a ConfigMap's data is the operator's entirely (a key
added, changed or removed is a change: the relay reads the config and its
signature from it), a Service's or PDB's spec is compared on the fields the
operator sets (the apiserver adds clusterIP, protocol, ...), and on every
kind the labels and owner reference the operator relies on to find and
garbage-collect its children.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from .pool import drifted

GUARDED_KINDS = ("ConfigMap", "Service", "PodDisruptionBudget")  # the Deployment: handlers.relays
DATA_FIELDS = ("data", "binaryData")
COMPONENT_LABEL = "app.kubernetes.io/component"


def guarded(child: Mapping[str, Any]) -> bool:
    """Whether the timer puts `child` back: every kind but the relay Deployment,
    which its own watch does (`handlers.relays`); the endpoints' Deployments
    (feedback receiver, unsubscribe, submission) have no watch, so the timer does."""
    if child["kind"] in GUARDED_KINDS:
        return True
    labels = child["metadata"].get("labels") or {}
    return bool(child["kind"] == "Deployment" and labels.get(COMPONENT_LABEL) != "relay")


def _data_changes(desired: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    out = []
    for field in DATA_FIELDS:
        want, have = desired.get(field) or {}, live.get(field) or {}
        out += [f"{field}.{k}" for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
    return out


def foreign_keys(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> list[str]:
    """Data keys of a live ConfigMap the operator did not render (someone added them)."""
    if live is None:
        return []
    ours = {k for f in DATA_FIELDS for k in desired.get(f) or {}}
    return sorted({k for f in DATA_FIELDS for k in live.get(f) or {}} - ours)


def changes(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> list[str]:
    """The paths where `live` is not what the operator rendered; ["deleted"] when
    it is gone; [] when it is as rendered."""
    if live is None:
        return ["deleted"]
    meta, live_meta = desired.get("metadata") or {}, live.get("metadata") or {}
    out = drifted(meta.get("labels") or {}, live_meta.get("labels"), "metadata.labels")
    if meta.get("ownerReferences"):
        out += drifted(meta["ownerReferences"], live_meta.get("ownerReferences"), "ownerReferences")
    if desired.get("kind") == "ConfigMap":
        out += _data_changes(desired, live)
    else:
        out += drifted(desired.get("spec") or {}, live.get("spec"), "spec")
    return out


# How long an edited child stays edited at most (plus one apply) while few pools
# are guarded: three GETs per pool per tick. The kubelet takes up to a minute to
# show a running relay a changed ConfigMap, and the relay refuses one the
# operator did not sign anyway, so seconds here are plenty.
RECHECK_FLOOR_SECONDS = 5.0
# The API reads the child guard may cost, whatever the number of pools. Three
# GETs per pool every 5 s was 720 reads a second with 1,200 pools: measured
# (bench/operator.py), 28 of the operator's 32 API threads sat in these reads
# while 321 new pools waited minutes for their first reconcile. 40 a second
# keeps 5 s up to 66 pools and stretches the round beyond (75 s at 1,000).
CHILD_READS_PER_SECOND = 40.0
READS_PER_POOL = len(GUARDED_KINDS)


class RecheckPace:
    """When each pool's children are read again: every `floor_seconds`, or less
    often when the pools together would read more than `reads_per_second`.

    A pool seen for the first time starts its wait then (its reconcile has just
    applied its children), so pools created together do not read together."""

    def __init__(
        self,
        floor_seconds: float = RECHECK_FLOOR_SECONDS,
        reads_per_second: float = CHILD_READS_PER_SECOND,
        reads_per_pool: int = READS_PER_POOL,
    ) -> None:
        self.floor_seconds = floor_seconds
        self.reads_per_second = reads_per_second
        self.reads_per_pool = reads_per_pool
        self._last: dict[str, float] = {}

    def interval(self, pools: int) -> float:
        """Seconds between two checks of one pool when `pools` are guarded."""
        return max(self.floor_seconds, pools * self.reads_per_pool / self.reads_per_second)

    def due(self, key: str, pools: int, now: float) -> bool:
        """Whether pool `key` reads its children now (and if so, counts it as read)."""
        last = self._last.setdefault(key, now)
        if now - last < self.interval(pools):
            return False
        self._last[key] = now
        return True

    def forget(self, key: str) -> None:
        self._last.pop(key, None)

    def keep(self, keys: Collection[str]) -> None:
        """Forget every pool but `keys` (those that left: deleted, refused)."""
        for key in self._last.keys() - set(keys):
            del self._last[key]
