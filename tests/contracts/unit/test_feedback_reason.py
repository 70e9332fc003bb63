"""The words an event that came back carries in `reason` (`wire.FeedbackReason`),
read back as the plugin reads them: the writers' words, and none of the relay's."""

from __future__ import annotations

import pytest

from mailpipe.contracts.wire import FeedbackReason


@pytest.mark.parametrize(
    ("reason", "word"),
    [
        ("async_bounce", FeedbackReason.ASYNC_BOUNCE),
        ("async_delay", FeedbackReason.ASYNC_DELAY),
        ("complaint:abuse", FeedbackReason.COMPLAINT),
        ("complaint:fraud", FeedbackReason.COMPLAINT),
        ("one-click", FeedbackReason.ONE_CLICK),
        ("mailto", FeedbackReason.MAILTO),
        ("complaint", None),  # the relay's: a record skipped for a complaint suppression
        ("greylisted", None),
        ("", None),
        (None, None),
    ],
)
def test_each_reason_reads_back_as_its_writers_word(
    reason: str | None, word: FeedbackReason | None
) -> None:
    assert FeedbackReason.of(reason) is word


def test_a_complaint_reason_carries_its_feedback_type_and_unsubscribes_say_how() -> None:
    assert FeedbackReason.COMPLAINT.complaint("abuse") == "complaint:abuse"
    assert {r for r in FeedbackReason if r.is_unsubscribe} == {
        FeedbackReason.ONE_CLICK,
        FeedbackReason.MAILTO,
    }
