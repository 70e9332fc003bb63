"""A Failed campaign resumes when its spec is edited; a Done one never fans out again (issue 12)."""

from __future__ import annotations

import pytest

from mailpipe.operator.progress import (
    FanoutCheckpoint,
    FanoutState,
    audience_fix_pending,
    fanout_wanted,
)

CASES = [
    (FanoutCheckpoint(), 1, True),
    (FanoutCheckpoint(state=FanoutState.RUNNING, generation=1), 1, True),
    (FanoutCheckpoint(state=FanoutState.WAITING_FOR_POOL, generation=1), 1, True),
    (FanoutCheckpoint(state=FanoutState.FAILED, generation=1), 1, False),
    (FanoutCheckpoint(state=FanoutState.FAILED, generation=1), 2, True),
    (FanoutCheckpoint(state=FanoutState.FAILED), 3, False),  # written before generations: kept
    (FanoutCheckpoint(state=FanoutState.DONE, generation=1), 2, False),
]


@pytest.mark.parametrize(
    ("checkpoint", "generation", "wanted"),
    CASES,
    ids=["new", "running", "waiting", "failed", "failed-then-edited", "failed-legacy", "done"],
)
def test_fanout_wanted(checkpoint: FanoutCheckpoint, generation: int, wanted: bool) -> None:
    status = {"fanout": checkpoint.patch()}
    assert fanout_wanted(status, generation) is wanted


def test_checkpoint_carries_the_generation_it_acted_on() -> None:
    written = FanoutCheckpoint(state=FanoutState.FAILED, reason="TemplateError", generation=4)
    assert written.patch() == {"state": "failed", "reason": "TemplateError", "generation": 4}


FIXABLE = FanoutCheckpoint(state=FanoutState.FAILED, reason="InvalidAudience", audience_version="7")


@pytest.mark.parametrize(
    ("checkpoint", "version", "pending"),
    [
        (FIXABLE, "7", False),  # the ConfigMap is as it was when the check failed
        (FIXABLE, "8", True),  # edited since: check again
        (FIXABLE.model_copy(update={"audience_version": ""}), "3", True),  # created at last
        (FIXABLE, "", True),  # deleted: the check fails again, with "not found"
        (FIXABLE.model_copy(update={"reason": "AudienceChanged"}), "8", True),
        (FIXABLE.model_copy(update={"reason": "TemplateError"}), "8", False),  # a spec fix
        (FIXABLE.model_copy(update={"audience_version": None}), "8", False),  # inline audience
        (FIXABLE.model_copy(update={"state": FanoutState.RUNNING}), "8", False),
        (FIXABLE, None, False),  # the spec no longer names a ConfigMap
    ],
    ids=[
        "unchanged",
        "edited",
        "created",
        "deleted",
        "audience-changed",
        "template-error",
        "inline",
        "running",
        "no-configmap",
    ],
)
def test_a_failure_the_configmap_can_fix_is_retried_when_it_changes(
    checkpoint: FanoutCheckpoint, version: str | None, pending: bool
) -> None:
    assert audience_fix_pending(checkpoint, version) is pending
