"""`kafkakit.commit_within`: a transaction's commit that cannot hang its caller.

kafka-python's commit_transaction waits for ever; the submission endpoint and
the fan-out both drop the producer when the commit is not acknowledged in
time, and both take this one helper."""

from __future__ import annotations

import threading

import pytest
from kafka import errors as kafka_errors

from mailpipe.kafkakit import commit_within


class _Producer:
    """A producer whose commit returns, raises, or hangs until released."""

    def __init__(self, *, raises: BaseException | None = None, hangs: bool = False) -> None:
        self.raises = raises
        self.release = threading.Event()
        self.hangs = hangs
        self.commits = 0

    def commit_transaction(self) -> None:
        self.commits += 1
        if self.hangs:
            self.release.wait()
        if self.raises is not None:
            raise self.raises


def test_a_commit_that_returns_returns() -> None:
    producer = _Producer()
    commit_within(producer, 5)
    assert producer.commits == 1


def test_a_commit_that_never_returns_is_given_up_with_a_kafka_timeout() -> None:
    producer = _Producer(hangs=True)
    try:
        with pytest.raises(kafka_errors.KafkaTimeoutError, match="not acknowledged within"):
            commit_within(producer, 0.2)
    finally:
        producer.release.set()  # the daemon thread ends with the test


def test_a_fenced_commit_raises_the_fencing_error_itself() -> None:
    fenced = kafka_errors.ProducerFencedError("fenced by a newer holder")
    with pytest.raises(kafka_errors.ProducerFencedError):
        commit_within(_Producer(raises=fenced), 5)
