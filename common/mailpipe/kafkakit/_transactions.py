"""A transaction's commit with a time limit, for every transactional producer.

kafka-python's `commit_transaction` has no timeout and was seen never to return
after a batch expired during a broker outage, which stopped every later
message of the submission endpoint; a fan-out holder frozen past its commit
must also give up rather than wait for ever. So the commit runs in a daemon
thread and the caller waits at most `seconds`: a `KafkaTimeoutError` then
tells it to drop the producer. The transaction is settled by the next
producer with the same transactional id (`init_transactions` commits it if the
commit reached the coordinator, else aborts it), so what is on the topic
stays what the caller can find out with a `read_committed` read.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

from kafka import errors as kafka_errors


def commit_within(producer: Any, seconds: float, thread_name: str = "kafka-commit") -> None:
    """`producer.commit_transaction()`, or KafkaTimeoutError after `seconds`.

    An error the commit raises (fenced, aborted) is raised here as it is."""
    outcome: concurrent.futures.Future[None] = concurrent.futures.Future()

    def commit() -> None:
        try:
            producer.commit_transaction()
        except BaseException as exc:
            outcome.set_exception(exc)
        else:
            outcome.set_result(None)

    threading.Thread(target=commit, name=thread_name, daemon=True).start()
    try:
        outcome.result(timeout=seconds)
    except concurrent.futures.TimeoutError as exc:
        raise kafka_errors.KafkaTimeoutError(
            f"commit not acknowledged within {seconds:.0f} s"
        ) from exc
