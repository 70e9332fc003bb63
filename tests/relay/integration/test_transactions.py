"""The relay reads only committed records (read_committed).

The submission endpoint writes a message's records, one per recipient
domain, in one Kafka transaction, and aborts it when Kafka cannot take the
whole message in time (it answers 451 and the client sends again). Read
uncommitted, the aborted copy was delivered too: a message sent twice, or one
half of a two-domain message sent while the client was told nothing was.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka import KafkaProducer

from mailpipe.devstack import samples
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from tests.conftest import wait_for

from .conftest import Pool, RelayProcess

pytestmark = pytest.mark.relay


def test_the_records_of_an_aborted_transaction_are_never_delivered(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., RelayProcess],
) -> None:
    rx, pool = routed_pool()
    outbound = pool.config.kafka.outbound_topic
    tx = KafkaProducer(
        bootstrap_servers=pool.bootstrap, transactional_id=f"{pool.prefix}-tx", acks="all"
    )
    try:
        tx.init_transactions()
        tx.begin_transaction()
        samples.send_record(tx, outbound, samples.delivery_record("aborted@d.test"), partition=0)
        tx.flush()  # in the partition's log, not committed
        tx.abort_transaction()
    finally:
        tx.close()
    pool.send("after@d.test", partition=0)  # behind the aborted one in the same partition
    pool.flush()
    relay = relays(pool)
    wait_for(lambda: "after@d.test" in rx.recipients(), 60, "the committed record", relay)
    assert rx.recipients() == ["after@d.test"]
