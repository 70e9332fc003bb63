"""Two operator processes on one campaign's fan-out: the broker fences the old holder.

Each chunk is one Kafka transaction under the campaign's transactional id; a
process taking the fan-out over claims it in the checkpoint, then
`init_transactions` aborts what the old holder left open and refuses its
every later send and commit (`fanout_lease`, `kafka_io.FanoutTransactions`).
The old holder is caught with a chunk's transaction open (its records on the
log, not committed) by stopping it (SIGSTOP) and looking at the outbound
topic: records past the last stable offset. Counts are read as the relays
read (read_committed).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from mailpipe.devstack import harness
from mailpipe.kafkakit import read_records, read_topic

from .conftest import OperatorProcess, get, kubectl, ready_pool, wait_for

pytestmark = pytest.mark.operator

# The old holder is stopped and the outbound topic looked at until a chunk's
# transaction is found open; it is let go again when none is, or when the one
# open was on its way to its commit. A look is two offset requests of clients
# kept open.
FREEZE_SECONDS = 120
LOOK_SECONDS = 0.02
# A second look this much later must find the same transaction still open, so
# the holder was not stopped with its commit already on its way.
SETTLE_SECONDS = 0.3
# A replacement claims a fan-out whose holder has been silent for
# fanout_lease.TAKEOVER_SECONDS (20 s), after its own start (pool and audience
# read, audience checked) on a loaded machine. Before: 200 s of silence.
TAKEOVER_WITHIN_SECONDS = 90
FANOUT_DONE_SECONDS = 180
CAMPAIGN: dict[str, Any] = {
    "poolRef": "news",
    "from": {"address": "news@sender.test"},
    "subject": "Hello",
    "text": "Hi",
    "audience": {"configMapRef": {"name": "aud"}},
}


def _campaign(env: dict[str, str], namespace: str, name: str, n: int) -> None:
    """Campaign `name` to `n` recipients from the ConfigMap "aud"."""
    csv = "address\n" + "".join(f"u{i}@d{i % 13}.test\n" for i in range(n))
    docs = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "aud", "namespace": namespace},
            "data": {"audience.csv": csv},
        },
        {
            "apiVersion": "mailpipe.io/v1alpha1",
            "kind": "Campaign",
            "metadata": {"name": name, "namespace": namespace},
            "spec": CAMPAIGN,
        },
    ]
    for doc in docs:
        assert kubectl(env, "apply", "-f", "-", stdin=json.dumps(doc)).returncode == 0


def _fanout(env: dict[str, str], name: str, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = (get(env, "camp", name, namespace) or {}).get("status", {})
    return dict(status.get("fanout", {}))


def _uid(env: dict[str, str], name: str, namespace: str) -> str:
    return str((get(env, "camp", name, namespace) or {})["metadata"]["uid"])


def _ids(bootstrap: str, topic: str, uid: str, committed: bool) -> Counter[str]:
    """How often each record id of campaign `uid` is on `topic` (`committed`: read_committed)."""
    ids = (json.loads(v)["id"] for _, v in read_topic(bootstrap, topic, committed=committed) if v)
    return Counter(i for i in ids if i.startswith(uid))


class _Offsets:
    """The end offsets of `topic` as both kinds of reader see them, from two
    clients kept open, so a look takes milliseconds: the high watermark
    (read_uncommitted) and the last stable offset (read_committed), where the
    first transaction still open begins."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._clients = [
            KafkaConsumer(
                bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=level
            )
            for level in ("read_uncommitted", "read_committed")
        ]
        partitions = self._clients[0].partitions_for_topic(topic) or ()
        self._tps = [TopicPartition(topic, p) for p in partitions]

    def open_transaction(self) -> dict[int, int] | None:
        """The last stable offsets if records lie past them (a transaction is
        open), else None."""
        end, stable = (c.end_offsets(self._tps) for c in self._clients)
        if all(end[tp] == stable[tp] for tp in self._tps):
            return None
        return {tp.partition: off for tp, off in stable.items()}

    def close(self) -> None:
        for c in self._clients:
            c.close()


def _freeze_mid_transaction(op: OperatorProcess, offsets: _Offsets) -> dict[int, int]:
    """SIGSTOP `op` while its chunk's transaction is open on the topic `offsets`
    looks at (the only producer there); returns the last stable offsets it left.

    `offsets` is made before the campaign is applied: its clients take a while
    to start on a loaded machine, and a whole fan-out of thousands of records
    can end in that time (CI saw one end in 6 s, unseen). Each look stops the
    operator first, then looks, so no chunk can commit between the look and
    the stop; a commit already on its way lands within SETTLE_SECONDS, and the
    operator is let go and looked at again."""
    found: dict[int, int] = {}

    def stopped_mid_chunk() -> bool:
        os.kill(op.pid, signal.SIGSTOP)
        try:
            first = offsets.open_transaction()
            if first is not None:
                time.sleep(SETTLE_SECONDS)  # a commit on its way lands within it
                if offsets.open_transaction() == first:
                    found.update(first)
                    return True
        except BaseException:
            os.kill(op.pid, signal.SIGCONT)  # never leave it stopped behind a failed look
            raise
        os.kill(op.pid, signal.SIGCONT)
        return False

    try:
        harness.wait_for(
            stopped_mid_chunk,
            FREEZE_SECONDS,
            "the operator stopped mid-transaction",
            watch=[op],
            interval_seconds=LOOK_SECONDS,
        )
    except harness.HarnessError as exc:
        raise AssertionError(str(exc)) from None
    return found


def test_a_frozen_holder_is_fenced_at_the_broker_and_taken_over_within_seconds(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    """Split brain: the acting operator frozen in the middle of a chunk (a stalled
    node, a replica cut off) is replaced, then wakes and goes on with that chunk.
    Before, the replacement waited 200 s of silence (a frozen holder could still
    be producing) and the woken one could repeat its chunk. Now the replacement
    takes over after a short silence, its `init_transactions` aborts the frozen
    chunk and fences the old holder, which says so and stops: every recipient
    once, as the relays read."""
    n, chunk = 4000, 200
    op = operator_factory(MAILPIPE_FANOUT_CHUNK=str(chunk))
    ready_pool(cli_env, namespace, kafka_bootstrap, topic_prefix, op)
    outbound = f"{topic_prefix}.outbound"
    offsets = _Offsets(kafka_bootstrap, outbound)
    try:
        _campaign(cli_env, namespace, "split", n)
        _freeze_mid_transaction(op, offsets)
    finally:
        offsets.close()

    def fanout() -> dict[str, Any]:
        return _fanout(cli_env, "split", namespace)

    try:
        frozen = fanout()
        assert frozen.get("state") == "running" and frozen.get("holder"), frozen
        op2 = operator_factory(MAILPIPE_FANOUT_CHUNK=str(chunk))
        wait_for(
            lambda: fanout().get("holder") != frozen["holder"],
            TAKEOVER_WITHIN_SECONDS,
            "the replacement claiming the fan-out (before: after 200 s of silence)",
            op2,
        )
        wait_for(lambda: fanout().get("state") == "done", FANOUT_DONE_SECONDS, "done", op2)
        described = kubectl(cli_env, "describe", "camp", "split", "-n", namespace).stdout
        assert "FanoutHeldElsewhere" in described  # it waited for the silent holder first
    finally:
        os.kill(op.pid, signal.SIGCONT)
    wait_for(
        lambda: "this process stops producing it" in op.log.read_text(),
        60,
        "the woken operator fenced and saying so",
        op,
    )
    assert f"{namespace}/split fenced: taken over by" in op.log.read_text()
    uid = _uid(cli_env, "split", namespace)
    ids = _ids(kafka_bootstrap, outbound, uid, committed=True)
    assert len(ids) == n
    assert max(ids.values()) == 1, [i for i, c in ids.items() if c > 1][:5]


def test_an_aborted_chunk_is_never_read_and_is_produced_again_exactly_once(
    operator_factory: Callable[..., OperatorProcess],
    cli_env: dict[str, str],
    namespace: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    """The operator killed with a chunk's records on the log but not committed:
    the next operator's `init_transactions` aborts them, so a read_committed
    reader (a relay) never sees them, and the resume (its tail scan reads
    committed records only) produces those recipients again, once. Before, a
    chunk was never in a transaction: there was none open to kill it in."""
    n, chunk = 4000, 200
    op = operator_factory(MAILPIPE_FANOUT_CHUNK=str(chunk))
    ready_pool(cli_env, namespace, kafka_bootstrap, topic_prefix, op)
    outbound = f"{topic_prefix}.outbound"
    offsets = _Offsets(kafka_bootstrap, outbound)
    try:
        _campaign(cli_env, namespace, "aborted", n)
        stable = _freeze_mid_transaction(op, offsets)
    finally:
        offsets.close()

    def fanout() -> dict[str, Any]:
        return _fanout(cli_env, "aborted", namespace)

    uid = _uid(cli_env, "aborted", namespace)
    in_flight = {
        json.loads(r.value)["id"]
        for r in read_records(kafka_bootstrap, outbound)
        if r.value and r.offset >= stable[r.partition]
    }
    in_flight = {i for i in in_flight if i.startswith(uid)}
    assert in_flight, "the frozen chunk has no records on the log"
    op.kill()

    op2 = operator_factory(MAILPIPE_FANOUT_CHUNK=str(chunk))
    wait_for(lambda: fanout().get("state") == "done", FANOUT_DONE_SECONDS, "done", op2)
    committed = _ids(kafka_bootstrap, outbound, uid, committed=True)
    assert len(committed) == n
    assert max(committed.values()) == 1, [i for i, c in committed.items() if c > 1][:5]
    logged = _ids(kafka_bootstrap, outbound, uid, committed=False)  # aborted records included
    assert {i for i, c in logged.items() if c == 2} == in_flight, (
        "the aborted chunk's recipients are on the log twice: aborted, then produced again"
    )
    assert max(logged.values()) == 2
