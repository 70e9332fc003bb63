"""How a fenced fan-out producer is told (`kafka_io._fenced`), as kafka-python 3.0
said it to a producer whose transactional id a newer one initialised
(tests/operator/integration/test_fanout_fencing.py shows it against the broker)."""

from __future__ import annotations

import pytest
from kafka import errors

from mailpipe.operator.kafka_io import _fenced

FENCED = errors.ProducerFencedError()


@pytest.mark.parametrize(
    ("exc", "fenced"),
    [
        (FENCED, True),  # a commit, or the epoch bump after a refused send
        (errors.InvalidProducerEpochError(), True),  # a send in flight at the fence
        (
            errors.KafkaError("Cannot perform send because at least one previous ...", FENCED),
            True,
        ),
        (
            errors.KafkaError(
                "Cannot execute transactional method because we are in an error state: "
                "[Error 90] ProducerFencedError"
            ),
            True,
        ),
        (errors.KafkaTimeoutError("commit not acknowledged within 30 s"), False),
        (errors.IllegalStateError("Cannot call send in state BUMPING_PRODUCER_EPOCH"), False),
        (errors.TransactionalIdAuthorizationFailedError(), False),
    ],
    ids=["fenced", "epoch", "send-after", "method-after", "timeout", "bumping", "acl"],
)
def test_a_fence_is_told_apart_from_other_failures(exc: BaseException, fenced: bool) -> None:
    assert _fenced(exc) is fenced


def test_a_fence_behind_another_error_is_found() -> None:
    try:
        try:
            raise errors.InvalidProducerEpochError()
        except errors.KafkaError as inner:
            raise errors.KafkaError("chunk failed") from inner
    except errors.KafkaError as outer:
        assert _fenced(outer)
