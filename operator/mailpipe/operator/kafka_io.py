"""The operator's Kafka IO: topics, fan-out produce, checkpoint scans, events.

With `events_hub` (the events reader) the operator's only module that imports
kafka-python (`.importlinter`, "kafka-only-at-its-boundary"); handlers catch
`KafkaError` from here.

Kafka clients are few and shared, whatever the number of pools: one producer
and at most `ADMIN_CLIENTS_PER_CLUSTER` admin clients per cluster here (and a
producer per fan-out running, for its transactions), and one events reader
per cluster (`events_hub.EventsHub`, re-exported).

Fan-out is exactly-once across operator restarts and replicas: before each
chunk the operator checkpoints, in the Campaign's status, the index it starts
at *and the end offsets of the outbound topic at that moment*, then produces
the chunk in one Kafka transaction (`FanoutTransactions`) under the campaign's
transactional id. A process resuming it first fences every earlier producer
of that id (`init_transactions` aborts what one left open), then scans the
records committed since those offsets (`produced_since`, read_committed, as
the relays read), finds which indices of this campaign are there (record ids
are `<campaign uid>-<index>`), and skips them. Nothing before the checkpoint
is re-sent, nothing after it is lost, and a fenced process commits nothing more
(`fanout_lease` says who may resume a fan-out, and when).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from kafka import KafkaProducer
from kafka import errors as kafka_errors
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError as KafkaError  # re-exported: handlers catch it
from kafka.errors import ProducerFencedError as ProducerFencedError  # re-exported, the same
from kafka.errors import TopicAlreadyExistsError

from mailpipe.contracts.wire import (
    WireError,
    decode_suppression,
    suppression_key,
)
from mailpipe.kafkakit import client_options, commit_within, login_refused, without_auto_create
from mailpipe.kafkakit import delete_topics as _delete_topics
from mailpipe.kafkakit import end_offsets as _end_offsets
from mailpipe.kafkakit import list_topics as _list_topics
from mailpipe.kafkakit import read_topic as _read_topic
from mailpipe.kafkakit._admin import COMPACTED, CREATE_TIMEOUT_SECONDS

from .events_hub import EventsHub as EventsHub
from .kafka_identity import connection

log = logging.getLogger("mailpipe.operator.kafka")

# Fan-out is bulk: wait a little to fill big batches, so 100k records take few requests.
FANOUT_LINGER_MS = 20
FANOUT_BATCH_BYTES = 256 * 1024
ACK_TIMEOUT_SECONDS = 30  # a record not acknowledged by then fails the chunk (retried whole)
CLOSE_TIMEOUT_SECONDS = 10  # at shutdown, pending sends get this long before they are dropped
# The broker aborts a fan-out transaction left open this long (its producer
# frozen or dead and nobody took over): the relays' read_committed reads of
# the pool's outbound topic wait behind an open one. A chunk's transaction
# holds rendered records only, sent and acknowledged within ACK_TIMEOUT_SECONDS.
TRANSACTION_TIMEOUT_MS = 60_000
# kafka-python's commit_transaction waits without a limit; a commit normally
# takes milliseconds, and past this the producer is given up (the next one's
# init_transactions settles the transaction either way).
COMMIT_LIMIT_SECONDS = 30.0
# Reconciles of many pools create topics at once; two clients keep a slow
# controller round trip from serialising all of them, and stay a fixed number.
ADMIN_CLIENTS_PER_CLUSTER = 2


class Producers:
    """One idempotent, acks=all producer per Kafka cluster, shared by campaign control
    records and warm-up un-pauses (fan-outs have their own: `FanoutTransactions`)."""

    def __init__(self) -> None:
        self._producers: dict[str, KafkaProducer] = {}
        self._lock = threading.Lock()

    def get(self, bootstrap: str) -> KafkaProducer:
        with self._lock:
            p = self._producers.get(bootstrap)
            if p is None:
                # Topics are the pool reconcile's to create. The producer asks
                # for the metadata of every topic it ever wrote to whenever it
                # writes to a new one: with auto-create, a deleted pool's
                # topics came back seconds after their deletion.
                p = without_auto_create(
                    KafkaProducer(
                        **client_options(connection(bootstrap)),
                        acks="all",
                        enable_idempotence=True,
                        linger_ms=FANOUT_LINGER_MS,
                        batch_size=FANOUT_BATCH_BYTES,
                        compression_type=None,
                        client_id="mailpipe-operator-fanout",
                    )
                )
                self._producers[bootstrap] = p
            return p

    def close(self) -> None:
        with self._lock:
            for p in self._producers.values():
                p.close(timeout=CLOSE_TIMEOUT_SECONDS)
            self._producers.clear()


def produce_all(producer: KafkaProducer, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Send and wait until every record is acknowledged; raise on the first failure."""
    futures = [producer.send(topic, key=k, value=v) for k, v in records]
    producer.flush()
    for f in futures:
        f.get(timeout=ACK_TIMEOUT_SECONDS)


# What a producer that another process with its transactional id fenced is
# told: ProducerFencedError by a commit or an epoch bump, InvalidProducerEpochError
# by a send in flight (kafka-python 3.0), then either inside other errors' args.
_FENCED = (kafka_errors.ProducerFencedError, kafka_errors.InvalidProducerEpochError)


def _fenced(exc: BaseException) -> bool:
    """Whether `exc` says this producer was fenced (see `_FENCED`)."""
    seen: BaseException | None = exc
    looked: set[int] = set()
    while seen is not None and id(seen) not in looked:
        looked.add(id(seen))
        if isinstance(seen, _FENCED) or any(isinstance(a, _FENCED) for a in seen.args):
            return True
        if kafka_errors.ProducerFencedError.__name__ in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class FanoutTransactions:
    """One campaign's fan-out producer: each chunk one Kafka transaction.

    Made per run of a fan-out, not shared: a producer has at most one
    transaction open, and the transactional id is the campaign's
    (`fanout_lease.transactional_id`). Making it fences every earlier producer
    of that id (`init_transactions`: the broker bumps the id's epoch and
    aborts the transaction an earlier one left open), so it must be made only
    after this process claimed the fan-out in the checkpoint. After any
    failure it is closed at once and not used again: the next one settles
    whatever it left open."""

    def __init__(self, bootstrap: str, transactional_id: str) -> None:
        self.transactional_id = transactional_id
        self._producer = without_auto_create(
            KafkaProducer(
                **client_options(connection(bootstrap)),
                transactional_id=transactional_id,
                acks="all",
                enable_idempotence=True,
                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
                linger_ms=FANOUT_LINGER_MS,
                batch_size=FANOUT_BATCH_BYTES,
                compression_type=None,
                client_id="mailpipe-operator-fanout",
            )
        )
        try:
            self._producer.init_transactions()
        except BaseException as exc:
            self._raise(exc)

    def produce(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        """`records` in one transaction, committed once every one is acknowledged.

        ProducerFencedError: another process made a producer of this id since
        (it took the fan-out over); nothing of this transaction is visible.
        Any other KafkaError: the transaction may or may not be committed
        (a commit that timed out); the next producer's init settles it and its
        scan finds out which."""
        producer = self._producer
        futures: list[Any] = []
        try:
            if not records:
                return  # no transaction to commit: a resumed chunk already on the topic
            producer.begin_transaction()
            futures.extend(producer.send(topic, key=k, value=v) for k, v in records)
            producer.flush()
            for f in futures:
                f.get(timeout=ACK_TIMEOUT_SECONDS)
            commit_within(producer, COMMIT_LIMIT_SECONDS, "fanout-commit")
        except BaseException as exc:
            # A send refused because the producer is already bumping its epoch
            # says nothing of why: the record that failed first does.
            failed = [f.exception for f in futures if f.failed()]
            self._raise(next((e for e in failed if _fenced(e)), exc))

    def _mapped(self, exc: BaseException) -> BaseException:
        """`exc` as the handlers catch it: ProducerFencedError, else a KafkaError."""
        mapped: BaseException = exc
        if _fenced(exc):
            mapped = kafka_errors.ProducerFencedError(
                f"transactional id {self.transactional_id} fenced by a newer producer: "
                f"{type(exc).__name__}: {exc}"
            )
        elif isinstance(exc, Exception) and not isinstance(exc, KafkaError):
            mapped = KafkaError(f"{type(exc).__name__}: {exc}")
        return mapped

    def _raise(self, exc: BaseException) -> NoReturn:
        """Close at once, then raise `exc` as the handlers catch it."""
        self.close(force=True)
        mapped = self._mapped(exc)
        if mapped is exc:
            raise exc
        raise mapped from exc

    def close(self, force: bool = False) -> None:
        """Close; `force`: at once, dropping what is unsent (never committed)."""
        with contextlib.suppress(Exception):
            self._producer.close(timeout=0 if force else CLOSE_TIMEOUT_SECONDS)

    def __enter__(self) -> FanoutTransactions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(force=exc[0] is not None)


def produce_to_every_partition(
    producer: KafkaProducer, topic: str, key: bytes, value: bytes
) -> int:
    """The same record once on each partition of `topic`; returns how many.

    For a record every reader must see *before* anything appended after it,
    whichever partitions they replay first (an IP's un-pause: contracts/warmup.py)."""
    partitions = sorted(producer.partitions_for(topic))
    futures = [producer.send(topic, key=key, value=value, partition=p) for p in partitions]
    producer.flush()
    for f in futures:
        f.get(timeout=ACK_TIMEOUT_SECONDS)
    return len(partitions)


# kafkakit's (one copy for every caller) with the operator's login; the
# handlers reach them as `kafka_io.end_offsets` etc. with a bootstrap string.
def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> the offset the next record appended to `topic` will get."""
    return _end_offsets(connection(bootstrap), topic)


def list_topics(bootstrap: str) -> set[str]:
    """The names of every topic on the cluster."""
    return _list_topics(connection(bootstrap))


def delete_topics(bootstrap: str, names: Iterable[str]) -> list[str]:
    """Delete those of `names` that exist; the names deleted."""
    return _delete_topics(connection(bootstrap), names)


def read_topic(
    bootstrap: str, topic: str, since: dict[int, int] | None = None, committed: bool = False
) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of `topic` up to its end now (from `since`; `committed`:
    read_committed, waiting for the transactions open now to be decided)."""
    return _read_topic(connection(bootstrap), topic, since, committed)


def produced_since(bootstrap: str, topic: str, since: dict[int, int], uid: str) -> set[int]:
    """Indices of campaign `uid` committed to `topic` after the `since` offsets.

    read_committed: the records of an aborted transaction (a fenced holder's
    chunk) are not there, so they are produced again, once."""
    prefix = f'"id":"{uid}-'.encode()
    return {
        int(json.loads(value)["id"].rsplit("-", 1)[1])
        for _, value in read_topic(bootstrap, topic, since, committed=True)
        if value and prefix in value
    }


def read_suppressions(bootstrap: str, topic: str) -> set[str]:
    """The whole compacted suppression topic, tombstones applied."""
    out: set[str] = set()
    for key, value in read_topic(bootstrap, topic):
        if key is None:
            continue
        if value is None:
            out.discard(key.decode())
            continue
        with contextlib.suppress(WireError):
            s = decode_suppression(value)
            out.add(suppression_key(s.address, s.list))
    return out


@dataclass(eq=False)
class _Batch:
    """Topics of every pool asking at about the same time, created in one request."""

    topics: dict[str, NewTopic] = field(default_factory=dict)
    led: bool = False  # a caller has taken it upon itself to send it
    done: threading.Event = field(default_factory=threading.Event)
    codes: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    error: BaseException | None = None


def _admin_client(bootstrap: str) -> KafkaAdminClient:
    """An admin client logged in as the operator. A refused login is said as
    such (kafka-python only says "Unable to bootstrap", as for a broker that
    is away), so the pool's KafkaUnavailable condition names the login."""
    conn = connection(bootstrap)
    try:
        return KafkaAdminClient(**client_options(conn), client_id="mailpipe-admin")
    except kafka_errors.KafkaTimeoutError:
        refused = login_refused(conn)
        if refused is None:
            raise
        raise kafka_errors.SaslAuthenticationFailedError(f"the operator's {refused}") from None


class Admins:
    """At most `ADMIN_CLIENTS_PER_CLUSTER` admin clients per cluster, kept open,
    and concurrent topic creations grouped into one request.

    kafkakit's `ensure_topics` opens and closes a client per call: right for a
    test or a relay's dev mode, but a reconcile of 200 pools would open 200.
    When 200 pools are created at once, their reconciles ask for topics
    together: the first caller of a batch sends it as soon as it has a client,
    and everyone who joined meanwhile gets their answer from that one
    CreateTopics request (group commit), instead of 200 controller round trips.
    """

    def __init__(self, factory: Callable[[str], KafkaAdminClient] | None = None) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, queue.Queue[KafkaAdminClient]] = {}
        self._made: dict[str, int] = {}
        self._open: dict[str, _Batch] = {}
        self._factory = factory or _admin_client
        self.clients = 0
        self.requests = 0

    def _checkout(self, bootstrap: str) -> KafkaAdminClient:
        with self._lock:
            idle = self._idle.setdefault(bootstrap, queue.Queue())
            make = idle.empty() and self._made.get(bootstrap, 0) < ADMIN_CLIENTS_PER_CLUSTER
            if make:
                self._made[bootstrap] = self._made.get(bootstrap, 0) + 1
        if not make:
            return idle.get()
        try:
            admin = self._factory(bootstrap)
        except BaseException:
            with self._lock:
                self._made[bootstrap] -= 1
            raise
        self.clients += 1
        return admin

    def _checkin(self, bootstrap: str, admin: KafkaAdminClient, broken: bool) -> None:
        if broken:  # a failed call may leave it half-connected: make a fresh one next time
            with contextlib.suppress(Exception):
                admin.close()
            with self._lock:
                self._made[bootstrap] -= 1
            return
        self._idle[bootstrap].put(admin)

    def ensure_topics(
        self,
        bootstrap: str,
        names: Iterable[str],
        partitions: int,
        replication: int,
        compacted: Iterable[str] = (),
    ) -> list[str]:
        """As `mailpipe.kafkakit.ensure_topics`: create the missing ones, return
        their names, leave existing ones as they are. Blocking."""
        compacted = set(compacted)
        wanted = list(dict.fromkeys([*names, *sorted(compacted)]))
        with self._lock:
            batch = self._open.setdefault(bootstrap, _Batch())
            for name in wanted:
                configs = dict(COMPACTED if name in compacted else {})
                topic = NewTopic(name, partitions, replication, topic_configs=configs)
                batch.topics.setdefault(name, topic)
            lead, batch.led = not batch.led, True
        if lead:
            self._send(bootstrap, batch)
        elif not batch.done.wait(2 * CREATE_TIMEOUT_SECONDS):
            raise kafka_errors.KafkaTimeoutError(f"creating topics on {bootstrap} timed out")
        if batch.error is not None:
            # The same kind of error for every caller (the reconcile names it),
            # a copy each: one exception object raised in several threads
            # would share one traceback.
            raise copy.copy(batch.error) from batch.error
        created: list[str] = []
        for name in wanted:
            code, message = batch.codes.get(name, (0, None))
            if code == 0 and name in batch.codes:
                created.append(name)
            elif code not in (0, TopicAlreadyExistsError.errno):
                error = kafka_errors.for_code(code)
                raise error(f"{name}: {message or error.message}")
        return created

    def _send(self, bootstrap: str, batch: _Batch) -> None:
        """Send `batch` once a client is free; callers joining until then ride along."""
        admin: KafkaAdminClient | None = None
        broken = True
        try:
            admin = self._checkout(bootstrap)
            with self._lock:  # closed: later callers start the next batch
                if self._open.get(bootstrap) is batch:
                    del self._open[bootstrap]
            self.requests += 1
            result = admin.create_topics(
                list(batch.topics.values()),
                timeout_ms=int(CREATE_TIMEOUT_SECONDS * 1000),
                raise_errors=False,
            )
            broken = False
            for topic in result.get("topics", []):
                batch.codes[topic["name"]] = (
                    topic.get("error_code", 0),
                    topic.get("error_message"),
                )
        except BaseException as exc:
            batch.error = exc
            with self._lock:
                if self._open.get(bootstrap) is batch:
                    del self._open[bootstrap]
        finally:
            if admin is not None:
                self._checkin(bootstrap, admin, broken)
            batch.done.set()

    def close(self) -> None:
        with self._lock:
            idle = list(self._idle.values())
            self._idle.clear()
            self._made.clear()
        for q in idle:
            while not q.empty():
                with contextlib.suppress(Exception):
                    q.get_nowait().close()
