"""The submission endpoint's Kafka side: a transactional outbox and the lists it reads.

A submitted message is answered 250 only once Kafka has committed it, and a
client retries a 451 or a lost 250 with the same message. Exactly once then
needs two things, both from Kafka itself rather than a store of our own:

- **Atomicity** (Kafka transactions): a message's records (one per
  recipient domain) and its id on the ledger topic are committed together or
  not at all, so a message to two domains is never half on the outbound
  topic. The relay reads `read_committed`, so an aborted transaction's
  records are never delivered.
- **Recognition** (the ledger): `<prefix>.submitted`, compacted, keyed by the
  submission id (`submission_policy.submission_id`, from the user, envelope
  and Message-ID). Before producing, the outbox asks whether the id was
  committed already: its own commits are known at once, other processes'
  from the followed ledger (read_committed). A retry of a committed message
  gets 250 and produces nothing.

When the deadline passes (Kafka away) the client gets 451 4.3.0 while a
commit may still be pending in the producer. It may still land: then its id
is on the ledger and in this process's set before the retry is looked at,
because one thread runs every transaction in order. If it fails instead,
the producer is dropped and a new one with the same transactional id fences
it (`init_transactions` aborts whatever the old one left open), so nothing
of it becomes visible. What this cannot recognise: a retry reaching another
replica within the ledger follower's lag (milliseconds) after the first
replica committed it, the same window the relay has for a hand-over.

kafka-python blocks and its producer is not thread-safe: it lives in one
thread, and transactions of messages queued meanwhile are grouped into one
commit (group commit), which is what keeps the rate up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from mailpipe.contracts.config import KafkaSettings
from mailpipe.contracts.suppressions import SuppressionList, apply_suppression
from mailpipe.kafkakit import TopicFollower, client_options, commit_within

log = logging.getLogger("mailpipe.inbound.submission")

__all__ = ["KafkaError", "Outbox", "OutboxUnavailable", "suppression_followers"]

MAX_BATCH = 100  # messages per group commit: bounds the work one failure returns as 451
REQUEST_TIMEOUT_MS = 15_000
DELIVERY_TIMEOUT_MS = 30_000  # >= request timeout + linger, as the producer requires
# The broker aborts a transaction left open this long (a producer that died
# mid-commit): short, because the relay's read_committed reads wait behind it.
TRANSACTION_TIMEOUT_MS = 60_000
JOB_POLL_SECONDS = 0.1  # how soon the outbox thread notices a stop request
INIT_RETRY_SECONDS = 1.0  # between attempts to (re)create the producer while Kafka is away
CLOSE_TIMEOUT_SECONDS = 5
# A commit is given up after this (it normally takes milliseconds): past the
# deadline clients have had their 451, and a stuck commit stops every message after it.
COMMIT_LIMIT_SECONDS = 30.0
LEDGER_RELOAD_SECONDS = 60.0
LEDGER_POLL_MS = 500
REQUEST_OVERHEAD_BYTES = 64 * 1024  # a request's headers and batch framing around the record


class OutboxUnavailable(Exception):
    """Kafka did not commit the message within the deadline; nothing of it is visible."""


@dataclass
class _Job:
    sid: str
    records: Sequence[tuple[str, bytes, bytes]]  # (topic, key, value)
    done: concurrent.futures.Future[bool] = field(default_factory=concurrent.futures.Future)


class Outbox:
    """Commits a message's records and its ledger entry in one Kafka transaction."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        ledger_topic: str,
        transactional_id: str,
        deadline_seconds: float,
        max_record_bytes: int,
        on_batch: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.settings = settings
        self.ledger_topic = ledger_topic
        self.transactional_id = transactional_id
        self.deadline_seconds = deadline_seconds
        self.max_record_bytes = max_record_bytes
        self._on_batch = on_batch
        self._accepted: set[str] = set()
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._stop = threading.Event()
        self._producer: KafkaProducer | None = None
        self.initialised = threading.Event()
        self._thread = threading.Thread(target=self._run, name="submission-outbox", daemon=True)
        self._ledger = TopicFollower(
            settings,
            ledger_topic,
            self._apply_ledger,
            isolation_level="read_committed",
        )

    def start(self) -> None:
        self._thread.start()

    async def ready(self, timeout_s: float) -> None:
        """The first producer initialised (any transaction a previous process with
        this transactional id left open is resolved) and the ledger read to its end."""
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self.initialised.wait, timeout_s):
            raise TimeoutError(f"Kafka transactions not initialised within {timeout_s}s")
        self._ledger.start(loop)
        await self._ledger.wait_caught_up(timeout_s)

    def known(self, sid: str) -> bool:
        with self._lock:
            return sid in self._accepted

    async def submit(self, sid: str, records: Sequence[tuple[str, bytes, bytes]]) -> bool:
        """True once committed now, False if it was committed before (a retry);
        OutboxUnavailable when Kafka did not take it within the deadline."""
        if self.known(sid):
            return False
        job = _Job(sid, records)
        self._jobs.put(job)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.done), self.deadline_seconds)
        except (TimeoutError, KafkaError, OSError) as exc:
            job.done.cancel()  # not started yet: never produced; started: decided by Kafka
            raise OutboxUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=CLOSE_TIMEOUT_SECONDS * 2)
        self._ledger.stop()

    def _apply_ledger(self, key: bytes | None, value: bytes | None, live: bool) -> None:
        if key is not None and value is not None:
            with self._lock:
                self._accepted.add(key.decode("utf-8", "replace"))

    # --- the outbox thread ---

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._producer is None and not self._connect():
                self._stop.wait(INIT_RETRY_SECONDS)
                continue
            try:
                first = self._jobs.get(timeout=JOB_POLL_SECONDS)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)
        self._drop_producer()

    def _connect(self) -> bool:
        """A new producer; `init_transactions` fences any earlier one with this id
        and resolves the transaction it left open (commit if it had begun
        committing, else abort)."""
        try:
            producer = KafkaProducer(
                **client_options(self.settings),
                client_id=f"{self.settings.client_id}-submission",
                transactional_id=self.transactional_id,
                enable_idempotence=True,
                acks="all",
                max_block_ms=int(self.deadline_seconds * 1000),
                request_timeout_ms=REQUEST_TIMEOUT_MS,
                delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
                max_request_size=self.max_record_bytes + REQUEST_OVERHEAD_BYTES,
            )
        except KafkaError as exc:
            log.warning("cannot create the transactional producer: %s", exc)
            return False
        try:
            producer.init_transactions()
        except KafkaError as exc:
            log.warning("cannot initialise Kafka transactions: %s", exc)
            with contextlib.suppress(Exception):
                producer.close(timeout=0)
            return False
        if self.initialised.is_set() and not self._reload_ledger():
            # a producer made again after a failure: not before the ledger is known
            with contextlib.suppress(Exception):
                producer.close(timeout=0)
            return False
        self._producer = producer
        self.initialised.set()
        return True

    def _commit_within(self, producer: KafkaProducer) -> None:
        """`commit_transaction`, given up after COMMIT_LIMIT_SECONDS: kafka-python
        waits for ever, and after a batch expired mid-outage it was seen never to
        return, which stopped every later message. The caller then drops the
        producer; the next one's `init_transactions` settles the transaction
        (committed if the commit had reached the coordinator, else aborted), and
        `_reload_ledger` learns which."""
        commit_within(producer, COMMIT_LIMIT_SECONDS, "submission-commit")

    def _reload_ledger(self) -> bool:
        """Read the ledger to its end (read_committed) into the known ids: after a
        new producer settled what an earlier one left open, a retry must find a
        message that committed after all, before the follower's lag passes."""
        consumer: KafkaConsumer | None = None
        try:
            consumer = KafkaConsumer(
                **client_options(self.settings),
                enable_auto_commit=False,
                isolation_level="read_committed",
                request_timeout_ms=REQUEST_TIMEOUT_MS,
            )
            tps = [
                TopicPartition(self.ledger_topic, p)
                for p in consumer.partitions_for_topic(self.ledger_topic) or ()
            ]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            end = consumer.end_offsets(tps)
            keys: set[str] = set()
            deadline = time.monotonic() + LEDGER_RELOAD_SECONDS
            while any(consumer.position(tp) < end[tp] for tp in tps):
                if time.monotonic() > deadline or self._stop.is_set():
                    return False
                for records in consumer.poll(timeout_ms=LEDGER_POLL_MS).values():
                    keys.update(r.key.decode("utf-8", "replace") for r in records if r.key)
        except KafkaError as exc:
            log.warning("cannot read the ledger %s: %s", self.ledger_topic, exc)
            return False
        finally:
            if consumer is not None:
                with contextlib.suppress(Exception):
                    consumer.close()
        with self._lock:
            self._accepted.update(keys)
        return True

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=0)  # force: whatever it still holds is never sent

    def _commit(self, batch: list[_Job]) -> None:
        new: dict[str, list[_Job]] = {}
        for job in batch:
            if not job.done.set_running_or_notify_cancel():
                continue  # its client got 451 already: never produced
            if self.known(job.sid):
                job.done.set_result(False)
            else:
                new.setdefault(job.sid, []).append(job)
        if not new:
            return
        producer = self._producer
        assert producer is not None
        now = time.time()
        try:
            producer.begin_transaction()
            sent = []
            for sid, jobs in new.items():
                first = jobs[0]
                for topic, key, value in first.records:
                    sent.append(producer.send(topic, key=key, value=value))
                entry = {"v": 1, "records": len(first.records), "time": now}
                ledger = json.dumps(entry).encode()
                sent.append(producer.send(self.ledger_topic, key=sid.encode(), value=ledger))
            # Every record acknowledged before the commit is asked for. kafka-python
            # was seen committing a transaction whose records had expired in an
            # outage (the ledger entry written, the outbound records not: a retry
            # got "already accepted" and the message was lost); a transaction with
            # a failed or unacknowledged record is never committed here, and the
            # next producer's `init_transactions` aborts it.
            deadline = time.monotonic() + COMMIT_LIMIT_SECONDS
            for future in sent:
                future.get(timeout=max(0.1, deadline - time.monotonic()))
            self._commit_within(producer)
        except Exception as exc:  # any failure: this producer is done, the next one fences it
            log.warning("transaction of %d message(s) failed: %s", len(new), exc)
            self._drop_producer()
            failure = exc if isinstance(exc, KafkaError) else KafkaError(str(exc))
            for jobs in new.values():
                for job in jobs:
                    job.done.set_exception(failure)
            return
        with self._lock:
            self._accepted.update(new)
        self._on_batch(len(new))
        for jobs in new.values():
            jobs[0].done.set_result(True)
            for dup in jobs[1:]:
                dup.done.set_result(False)


def suppression_followers(
    settings: KafkaSettings, suppressions: SuppressionList, bad: Callable[[], None]
) -> list[TopicFollower]:
    """The pool's suppressions and the obeyed lists (never-mail), as the relay reads them."""
    return [
        TopicFollower(settings, settings.suppressions_topic, apply_suppression(suppressions, bad)),
        *(
            TopicFollower(settings, topic, apply_suppression(suppressions, bad, topic))
            for topic in settings.obeyed_suppressions_topics
            if topic != settings.suppressions_topic
        ),
    ]
