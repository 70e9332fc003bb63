"""A Failed campaign resumes when its spec is edited; a Done one never fans out again (issue 12)."""

from __future__ import annotations

import pytest

from mailpipe.operator.progress import FanoutCheckpoint, FanoutState, fanout_wanted

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
