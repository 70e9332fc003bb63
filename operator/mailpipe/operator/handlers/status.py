"""Kubernetes-style status conditions, shared by the SendingPool and Campaign handlers.

Conditions follow the API conventions (`type`, `status` "True"/"False",
`reason`, `message`, `observedGeneration`, `lastTransitionTime`);
`merge_conditions` keeps a condition's transition time while its status holds,
so `kubectl describe` shows when something last changed, not when it was last
reconciled.

`pool_conditions` derives a SendingPool's conditions from what the operator
saw in the world (spec problems, Kafka, the relay Deployment's status), in the
kstatus shape (`Ready`, `Reconciling`, `Stalled`, each with
observedGeneration); other checks add a `validation.Problem` and get the same
conditions and reasons.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..relay_pods import PodTrouble
from ..validation import Problem


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
    """`new` over `old`: lastTransitionTime kept while a condition's status holds.

    Conditions of `old` whose type `new` does not mention stay as they are, so
    each writer (reconcile, warm-up, policy checks) owns its own types; the
    order is stable (new types at the end), so an unchanged world compares equal.
    """
    fresh = {c["type"]: c for c in new}
    out = []
    for p in old or []:
        c = fresh.pop(p.get("type"), None)
        if c is None:
            out.append(p)
        elif p.get("status") == c["status"]:
            out.append(
                {**c, "lastTransitionTime": p.get("lastTransitionTime", c["lastTransitionTime"])}
            )
        else:
            out.append(c)
    return out + list(fresh.values())


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The condition of `type_`, or None."""
    return next((c for c in conditions or [] if c.get("type") == type_), None)


# --- SendingPool: Ready from the world (kstatus-readable) ------------------------------
#
# Ready: relays available, spec valid, referenced Secrets present, topics in place.
# Stalled (kstatus "Failed"): the spec or what it references is wrong; nothing is
# rolled out until it is fixed. Reconciling (kstatus "InProgress"): the operator or
# the relays are still getting there (topics being created, relays not all
# available or not all on the latest template). A rolling update (a DKIM key
# rotation) keeps Ready True while enough relays run: Reconciling says it rolls.


@dataclass(frozen=True)
class Relays:
    """A relay Deployment's availability, as its controller reports it in status."""

    desired: int
    available: int
    updated: int
    observed: bool  # the Deployment's controller has seen its latest generation
    unavailable: int = 0  # pods of any revision not available (a new one that cannot start)

    @classmethod
    def of(cls, deployment: Mapping[str, Any] | None, desired: int) -> Relays:
        """From a Deployment as JSON (None: not created yet)."""
        if deployment is None:
            return cls(desired, 0, 0, observed=False)
        st = deployment.get("status") or {}
        generation = (deployment.get("metadata") or {}).get("generation")
        return cls(
            desired=desired,
            available=int(st.get("availableReplicas") or 0),
            updated=int(st.get("updatedReplicas") or 0),
            observed=generation is not None and st.get("observedGeneration") == generation,
            unavailable=int(st.get("unavailableReplicas") or 0),
        )

    @property
    def all_available(self) -> bool:
        return self.available >= self.desired

    @property
    def pods_to_explain(self) -> bool:
        """Some relay pod is not available: its pods say why (`relay_pods`)."""
        return self.desired > 0 and (not self.all_available or self.unavailable > 0)

    @property
    def rolled_out(self) -> bool:
        return self.desired == 0 or (self.observed and self.updated >= self.desired)

    def summary(self) -> str:
        if self.desired == 0:
            return "scaled to zero: records wait on Kafka"
        return f"{self.available}/{self.desired} relays available"


def pool_conditions(
    generation: int | None,
    problems: list[Problem],
    kafka: Problem | None,
    relays: Relays | None,
    trouble: PodTrouble | None = None,
) -> list[dict[str, Any]]:
    """Ready, Reconciling, Stalled, RelaysAvailable and TopicsReady of a SendingPool.

    `problems`: what is wrong with the spec or its references (Stalled);
    `kafka`: the topics could not be ensured (retried); `relays`: None while
    nothing was rolled out (because of `problems`); `trouble`: why relay pods
    are not available, from the pods (`relay_pods.diagnose`): the reason of
    Ready when relays are missing, of Reconciling when a rollout is held up.
    """
    gen = generation
    if problems:
        first = problems[0]
        text = "; ".join(p.message for p in problems)
        return [
            condition("Ready", False, first.reason, text, gen),
            condition("Reconciling", False, first.reason, "", gen),
            condition("Stalled", True, first.reason, text, gen),
            condition("RelaysAvailable", False, "NotRolledOut", f"not rolled out: {text}", gen),
        ]
    assert relays is not None
    relays_ok = relays.all_available
    # Why relays are missing: their pods' trouble, else only how many.
    missing = ("RelaysUnavailable", relays.summary())
    if trouble is not None:
        missing = (trouble.reason, f"{relays.summary()}: {trouble.message}")
    if kafka is not None:
        ready = condition("Ready", False, kafka.reason, kafka.message, gen)
        reconciling = condition("Reconciling", True, kafka.reason, kafka.message, gen)
    elif not relays_ok:
        why, message = missing
        ready = condition("Ready", False, why, message, gen)
        reconciling = condition("Reconciling", True, why, message, gen)
    elif not relays.rolled_out or trouble is not None:
        why = "RollingOut"
        message = f"rolling out: {relays.updated}/{relays.desired} relays updated"
        if trouble is not None:  # relays available, a new one cannot start
            why, message = trouble.reason, f"{message}: {trouble.message}"
        ready = condition("Ready", True, "RelaysAvailable", relays.summary(), gen)
        reconciling = condition("Reconciling", True, why, message, gen)
    else:
        message = f"{relays.summary()}, topics in place"
        ready = condition("Ready", True, "RelaysAvailable", message, gen)
        reconciling = condition("Reconciling", False, "Reconciled", "", gen)
    return [
        ready,
        reconciling,
        condition("Stalled", False, "AsExpected", "", gen),
        condition(
            "RelaysAvailable",
            relays_ok,
            "RelaysAvailable" if relays_ok else missing[0],
            relays.summary() if relays_ok else missing[1],
            gen,
        ),
        condition(
            "TopicsReady",
            kafka is None,
            kafka.reason if kafka else "TopicsInPlace",
            kafka.message if kafka else "",
            gen,
        ),
    ]


# --- Campaign (kstatus-readable) --------------------------------------------------------
#
# Ready True once the campaign is being acted on as written (Scheduled, Sending,
# Paused, Completed): a sending campaign is not "in progress" for kstatus, or
# `flux`/`kubectl wait` would wait for its last delivery. Reconciling while it
# waits to start (its pool, its audience check); Stalled when it cannot proceed
# without an edit (Failed, or an edit refused after fan-out).


def campaign_conditions(
    generation: int | None,
    phase: str,
    reason: str,
    stalled: tuple[str, str] | None,
) -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled of a Campaign; `stalled`: (reason, message) or None."""
    gen = generation
    if stalled is not None:
        why, message = stalled
        return [
            condition("Ready", False, why, message, gen),
            condition("Reconciling", False, why, "", gen),
            condition("Stalled", True, why, message, gen),
        ]
    if phase == "Pending":
        return [
            condition("Ready", False, "Pending", reason, gen),
            condition("Reconciling", True, "Pending", reason, gen),
            condition("Stalled", False, "AsExpected", "", gen),
        ]
    return [
        condition("Ready", True, phase, reason, gen),
        condition("Reconciling", False, phase, "", gen),
        condition("Stalled", False, "AsExpected", "", gen),
    ]
