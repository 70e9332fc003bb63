"""A Campaign's progress as typed values: the fan-out checkpoint, its states, the phase.

The fan-out daemon writes a checkpoint into `status.fanout` before every chunk
(ARCHITECTURE.md, "Fan-out exactly once"); the status timer reads it
back to derive the phase. Both sides use `FanoutCheckpoint`, so the shape of
`status.fanout` is written down once. The enums' values are exactly the strings
that status and the CRD's printer columns have always shown.

Pure: no clock (callers pass `now`), no API.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from .campaign import FailReason, parse_start

AUDIENCE_FIXABLE = frozenset(r.value for r in FailReason if r.fixed_in_audience)


class FanoutState(enum.StrEnum):
    """Where the fan-out daemon is (`status.fanout.state`)."""

    PAUSED = "paused"  # spec.suspend is set: nothing is produced
    # the audience and templates are being checked (the message says how far),
    # or cannot be read (the message says why); nothing is produced yet
    CHECKING = "checkingAudience"
    WAITING_FOR_POOL = "waitingForPool"  # checked; the pool is missing or not Ready
    RUNNING = "running"  # producing chunks; the checkpoint says where to resume
    DONE = "done"  # every recipient is on Kafka (or suppressed before send)
    FAILED = "failed"  # the campaign cannot be sent as written

    @property
    def finished(self) -> bool:
        """The daemon has nothing more to do for this campaign."""
        return self in (FanoutState.DONE, FanoutState.FAILED)


class CampaignPhase(enum.StrEnum):
    """`status.phase`, shown by `kubectl get campaigns`."""

    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    SENDING = "Sending"
    PAUSED = "Paused"
    COMPLETED = "Completed"
    FAILED = "Failed"


class FanoutCheckpoint(BaseModel):
    """`status.fanout`: fan-out progress, enough to resume without producing twice.

    Written as a merge patch with only the fields that were set (`patch()`),
    so a state-only update (paused, waitingForPool) keeps the last checkpoint,
    and an explicit `offsets=None` removes the offsets once the fan-out is done.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore"
    )

    state: FanoutState | None = None
    message: str | None = None
    reason: str | None = None
    """Why the fan-out failed (`campaign.FailReason`): the reason of the Failed condition."""
    generation: int | None = None
    """The Campaign's metadata.generation this state was written for: status.observedGeneration,
    and how a Failed campaign knows its spec was edited since (`fanout_wanted`)."""
    next_index: int = 0
    """Audience index the current chunk starts at."""
    offsets: dict[int, int] | None = None
    """End offsets of the outbound topic, per partition, when that chunk started:
    on resume, records after them are scanned for indices already produced."""
    enqueued: int = 0
    suppressed_before_send: int = 0
    total: int = 0
    started_at: str | None = None
    audience_digest: str | None = None
    """`PreparedAudience.digest()` of the audience being produced: a resume over a
    different list (an edited ConfigMap or inline audience) is refused, because
    indices already produced would then name other people."""
    holder: str | None = None
    """The operator process producing this fan-out (`fanout_lease.Holder`), while
    RUNNING; no holder once it stopped cleanly, finished or failed."""
    held_at: float | None = None
    """When the holder wrote this checkpoint (epoch seconds), for `fanout_lease.may_produce`."""
    audience_version: str | None = None
    """On a failure the audience ConfigMap can fix: that ConfigMap's resourceVersion
    ("" while it does not exist). When it changes, the status timer re-arms the
    fan-out (`audience_fix_pending`): fixing the ConfigMap is enough, no spec edit."""

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> FanoutCheckpoint:
        """The checkpoint in a Campaign's status (an empty one before the first)."""
        return cls.model_validate(dict(status.get("fanout") or {}))

    @property
    def is_empty(self) -> bool:
        """Nothing was ever written: not even a paused or waiting state."""
        return not self.model_fields_set

    def patch(self) -> dict[str, Any]:
        """The fields that were set, as JSON for a status merge patch."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def fanout_wanted(status: Mapping[str, Any], generation: int | None) -> bool:
    """Whether a Campaign needs its fan-out daemon (kopf's `when` filter of the daemon).

    Done: never again. Failed: only once the spec was edited since the failure
    (a higher generation); the fan-out then resumes from its checkpoint, so
    nobody already produced is produced again.
    """
    checkpoint = FanoutCheckpoint.from_status(status)
    if checkpoint.state is FanoutState.FAILED:
        failed_at = checkpoint.generation
        return failed_at is not None and generation is not None and generation > failed_at
    return checkpoint.state is not FanoutState.DONE


def audience_configmap(spec: Mapping[str, Any]) -> str | None:
    """The name of the ConfigMap a Campaign spec takes its audience from, if any."""
    ref = (spec.get("audience") or {}).get("configMapRef") or {}
    name = ref.get("name")
    return str(name) if name else None


def audience_fix_pending(checkpoint: FanoutCheckpoint, configmap_version: str | None) -> bool:
    """A fan-out Failed by its audience ConfigMap whose ConfigMap changed since: check again.

    `configmap_version` is the ConfigMap's resourceVersion now ("" when absent,
    None when the audience is not in a ConfigMap)."""
    return (
        checkpoint.state is FanoutState.FAILED
        and checkpoint.reason in AUDIENCE_FIXABLE
        and checkpoint.audience_version is not None
        and configmap_version is not None
        and configmap_version != checkpoint.audience_version
    )


def campaign_phase(
    fanout: FanoutCheckpoint, spec: Mapping[str, Any], finished: int, now: float
) -> tuple[CampaignPhase, str]:
    """(phase, reason) from the fan-out checkpoint and the recipients with a final disposition."""
    state = fanout.state
    if state is FanoutState.FAILED:
        return CampaignPhase.FAILED, _or(fanout.message, "fan-out failed")
    if spec.get("suspend"):
        return CampaignPhase.PAUSED, "suspended"
    if state in (FanoutState.WAITING_FOR_POOL, FanoutState.CHECKING) or state is None:
        return CampaignPhase.PENDING, _or(fanout.message, "waiting for the pool")
    start = parse_start(spec.get("startAt"))  # before the state test: a bad startAt always shows
    if state is FanoutState.DONE:
        if finished + fanout.suppressed_before_send >= fanout.total:
            return CampaignPhase.COMPLETED, "every recipient has a final disposition"
        if start is not None and start > now and finished == 0:
            return CampaignPhase.SCHEDULED, "waiting for startAt"
        return CampaignPhase.SENDING, "waiting for dispositions"
    return CampaignPhase.SENDING, "fanning out"


def _or(message: str | None, default: str) -> str:
    return default if message is None else message
