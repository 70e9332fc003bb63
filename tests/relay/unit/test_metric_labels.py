"""Issue 22 finding 4: a bad producer or a chatty receiver cannot grow the metrics.

The `reason` label of `mailpipe_dlq_records_total` was the first word of the
error, which for an unknown field is the producer's own field name: 30
records with random keys made 30 series. Every label value now comes from an
enum or the pool's configuration. Two rounds of a thousand bad records and a
thousand odd replies each, alike in kind but every text and field name new,
must leave the same number of series, and no label may carry any of them.
"""

from __future__ import annotations

import json
import secrets

import pytest

from mailpipe.relay.ports import TopicPartition

from .conftest import Harness, make_config, record_bytes

pytestmark = pytest.mark.security

ROUND = 1000
# Reply codes a receiver may give, cycled through in the same order each round:
# only their texts (enhanced status, words) change from one round to the next.
CODES = ("421 4.7.0", "450 4.2.1", "451 4.3.0", "452 4.5.3", "550 5.1.1", "552 5.2.2", "554 5.7.1")


def bad_record(i: int, token: str) -> bytes:
    """One of four ways a record is not a delivery record, the producer's text in each."""
    match i % 4:
        case 0:
            return record_bytes("a@d.test", **{token: 1})  # an unknown field named by them
        case 1:
            return b'{"v": 1, "' + token.encode()  # not JSON
        case 2:
            return json.dumps({"v": token}).encode()  # an unknown wire version
        case _:
            return json.dumps([token]).encode()  # not a JSON object


def series(h: Harness) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    return [
        (s.name, tuple(sorted(s.labels.items())))
        for family in h.engine.metrics.registry.collect()
        for s in family.samples
    ]


async def one_round(h: Harness, start: int) -> list[str]:
    """A thousand bad records and a thousand odd replies; the tokens they carried."""
    tokens = []
    for i in range(ROUND):
        token = "x" + secrets.token_hex(6)
        tokens.append(token)
        h.put(bad_record(i, token))
        rcpt = f"{token}@d.test"
        code = CODES[i % len(CODES)]
        h.transport.answer(rcpt, f"{code} {token} says no ({secrets.token_hex(3)})")
        h.put(record_bytes(rcpt))
    end = start + 2 * ROUND
    await h.run_until(lambda: h.source.committed.get(TopicPartition("p.outbound", 0)) == end, 60)
    return tokens


async def test_a_thousand_bad_records_and_replies_add_no_series() -> None:
    h = Harness(make_config())
    first = await one_round(h, 0)
    before = series(h)
    second = await one_round(h, 2 * ROUND)
    after = series(h)
    assert len(h.sink.topics["p.dlq"]) == 2 * ROUND  # every bad record was counted
    assert len(after) == len(before), sorted(set(after) - set(before))[:5]
    labels = {v for _, pairs in after for _, v in pairs}
    assert not [t for t in first + second if any(t in v for v in labels)]
    dlq = {dict(pairs)["reason"] for name, pairs in after if name == "mailpipe_dlq_records_total"}
    assert dlq == {"undecodable"}
