"""Engine promises under hostile or unlucky records (issue 10, findings 1, 3 and 4),
with in-memory ports: every record ends in one disposition, delay steps match the
delay, and a DLQ copy always fits on its topic."""

from __future__ import annotations

import json

import pytest

from mailpipe.relay.emission import DLQ_COPY_BYTES, dlq_copy
from mailpipe.relay.ports import SourceRecord, TopicPartition

from .conftest import Harness, make_config, record_bytes

pytestmark = pytest.mark.security


@pytest.mark.parametrize(
    ("delay", "topic"),
    [(59.99, "p.delay.1m"), (60, "p.delay.1m"), (599.99, "p.delay.10m"), (3600, "p.delay.10m")],
)
def test_a_delay_lands_on_the_step_that_matches_it(
    harness: Harness, delay: float, topic: str
) -> None:
    assert harness.engine.postponer.topic_for(delay) == topic


def test_a_dlq_copy_of_a_large_non_utf8_value_fits() -> None:
    value = b'{"v":1,"id":"' + b"\xff\xfe" * 100_000 + b'"}'
    copy = json.loads(dlq_copy(SourceRecord("p.outbound", 0, 7, b"k", value, 0), "not JSON"))
    assert copy["truncated"] is True and copy["value_bytes"] == len(value)
    assert len(copy["value_base64"]) <= DLQ_COPY_BYTES * 4 // 3 + 4
    assert copy["reason"] == "not JSON" and copy["offset"] == 7


async def test_an_exception_while_delivering_ends_in_failed_events_and_the_dlq(
    harness: Harness,
) -> None:
    class Broken(Exception):
        pass

    async def explode(envelope: object) -> object:
        raise Broken("resolver fell over")

    harness.transport.deliver = explode  # type: ignore[method-assign]
    harness.put(record_bytes("a@d.test", "b@d.test"))
    harness.put(record_bytes("c@e.test"))
    await harness.run_until(
        lambda: harness.source.committed.get(TopicPartition("p.outbound", 0)) == 2
    )
    assert sorted(e["disposition"] for e in harness.events()) == ["failed"] * 3
    reasons = [json.loads(v or b"")["reason"] for _, v in harness.sink.topics["p.dlq"]]
    assert reasons == ["relay error: Broken: resolver fell over"] * 2


async def test_a_record_far_in_the_future_is_postponed_again_not_held() -> None:
    config = make_config()
    h = Harness(config)
    now = h.clock.time()
    h.put(record_bytes("later@d.test", not_before=now + 7 * 86400), topic="p.delay.10m")
    h.put(record_bytes("soon@d.test", not_before=now + 120), topic="p.delay.10m")
    await h.run_until(lambda: TopicPartition("p.delay.10m", 0) in h.source.paused, 2)
    h.clock.advance(600)  # one step after arrival: the far record goes back on a delay topic
    await h.run_until(lambda: len(h.events()) == 1)
    assert [e["recipient"] for e in h.events()] == ["soon@d.test"]
    [(_, again)] = h.sink.topics["p.delay.10m"]
    assert [r["address"] for r in json.loads(again or b"")["recipients"]] == ["later@d.test"]


async def test_a_dlq_copy_keeps_the_original_kafka_headers(harness: Harness) -> None:
    """Issue 10, finding 11: DLQ copies dropped the producer's headers."""
    headers = (("traceparent", b"00-abc-def-01"), ("schema", b"delivery.v1"))
    harness.source.append("p.outbound", 0, b"k", b"{not json", headers)
    await harness.run_until(lambda: len(harness.sink.topics["p.dlq"]) == 1)
    assert harness.sink.headers["p.dlq"] == [headers]


async def test_a_retry_the_broker_refuses_still_ends_in_a_disposition(harness: Harness) -> None:
    """Issue 10, finding 3: a 10 MB record got a 451 and its retry produce failed
    (MessageSizeTooLarge); the offset never finished and the partition stopped."""
    harness.transport.answer("big@d.test", "451 4.3.0 try later")
    harness.sink.refuse.add("p.delay.1m")
    harness.put(record_bytes("big@d.test"))
    harness.put(record_bytes("next@d.test"))
    await harness.run_until(
        lambda: harness.source.committed.get(TopicPartition("p.outbound", 0)) == 2
    )
    by_rcpt = {e["recipient"]: e["disposition"] for e in harness.events()}
    assert by_rcpt == {"big@d.test": "failed", "next@d.test": "delivered"}
    [(_, copy)] = harness.sink.topics["p.dlq"]
    assert json.loads(copy or b"")["reason"].startswith("relay error: ValueError")
