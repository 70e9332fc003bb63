"""settlement.settle: the table of what one attempt's replies become (pure: no
broker, no transport, no clock). This is where a 4xx becomes a retry."""

from __future__ import annotations

import pytest

from mailpipe.contracts.config import RetrySettings
from mailpipe.contracts.wire import (
    DeliveryRecord,
    Disposition,
    Recipient,
    decode_event,
    decode_record,
    encode,
)
from mailpipe.relay.classify import reply
from mailpipe.relay.ports import TransactionResult
from mailpipe.relay.settlement import Settlement, Transaction, cancelled, chunks, settle

from .conftest import record_bytes

NOW = 1_700_000_000.0
RETRY = RetrySettings(schedule_seconds=[60, 600], max_age_seconds=3600)


def record(*addresses: str, attempt: int = 0, age_s: float = 0.0) -> DeliveryRecord:
    return decode_record(record_bytes(*addresses, attempt=attempt, created_at=NOW - age_s))


def one(reply_text: str, *, attempt: int = 0, age_s: float = 0.0) -> Settlement:
    """The settlement of a one-recipient record that got `reply_text`."""
    rec = record("a@d.test", attempt=attempt, age_s=age_s)
    code, _, text = reply_text.partition(" ")
    result = TransactionResult({"a@d.test": reply(int(code), text)}, mx_host="mx.d.test")
    return settle(
        rec,
        [Transaction(rec.recipients, result)],
        egress_ip="127.0.0.2",
        now=NOW,
        retry=RETRY,
        relay_id="r",
        pool="ns/pool",
    )


@pytest.mark.parametrize(
    ("reply_text", "attempt", "age_s", "disposition", "retry_due", "suppressed", "backoffs"),
    [
        ("250 2.0.0 OK", 0, 0, Disposition.DELIVERED, None, False, 0),
        ("451 4.3.0 later", 0, 0, Disposition.DEFERRED, NOW + 60, False, 0),
        ("451 4.3.0 later", 1, 0, Disposition.DEFERRED, NOW + 600, False, 0),
        ("451 4.3.0 later", 5, 0, Disposition.DEFERRED, NOW + 600, False, 0),  # last step repeats
        ("451 4.3.0 later", 0, 3600 - 60, Disposition.DEFERRED, NOW + 60, False, 0),  # just fits
        ("451 4.3.0 later", 0, 3600 - 59, Disposition.EXPIRED, None, False, 0),  # past max age
        ("421 4.7.0 slow down", 0, 0, Disposition.DEFERRED, NOW + 60, False, 1),
        ("550 5.1.1 no such user", 0, 0, Disposition.BOUNCED, None, True, 0),
        # a policy refusal whose words name no rate or reputation asks nothing
        # of the IP (the bounce rules' actions; issue 21)
        ("554 5.7.1 blocked", 0, 0, Disposition.BOUNCED, None, False, 0),
        (
            "554 5.7.1 Client host [192.0.2.1] blocked using zen.spamhaus.org",
            0,
            0,
            Disposition.BOUNCED,
            None,
            False,
            1,
        ),
        ("552 5.2.2 full", 0, 0, Disposition.BOUNCED, None, False, 0),
    ],
    ids=lambda v: str(v),
)
def test_settlement_table(
    reply_text: str,
    attempt: int,
    age_s: float,
    disposition: Disposition,
    retry_due: float | None,
    suppressed: bool,
    backoffs: int,
) -> None:
    s = one(reply_text, attempt=attempt, age_s=age_s)
    [ev] = s.events
    assert ev.disposition is disposition
    assert (ev.egress_ip, ev.mx_host, ev.attempt) == ("127.0.0.2", "mx.d.test", attempt + 1)
    if retry_due is None:
        assert s.retry is None
    else:
        assert s.retry is not None
        assert (s.retry.not_before, s.retry.attempt) == (retry_due, attempt + 1)
    assert bool(s.suppressions) is suppressed
    assert len(s.actions) == backoffs


def test_missing_reply_is_a_deferral_and_only_deferred_recipients_retry() -> None:
    rec = record("ok@d.test", "lost@d.test", "later@d.test")
    result = TransactionResult(
        {"ok@d.test": reply(250, "2.0.0 OK"), "later@d.test": reply(452, "4.2.2 full")}
    )
    s = settle(
        rec,
        [Transaction(rec.recipients, result)],
        egress_ip="127.0.0.2",
        now=NOW,
        retry=RETRY,
        relay_id="r",
        pool="ns/pool",
    )
    assert [(e.recipient, e.disposition, e.reason) for e in s.events] == [
        ("ok@d.test", Disposition.DELIVERED, "accepted"),
        ("lost@d.test", Disposition.DEFERRED, "temporary_failure"),
        ("later@d.test", Disposition.DEFERRED, "mailbox_busy_or_full"),
    ]
    assert s.retry is not None
    assert [r.address for r in s.retry.recipients] == ["lost@d.test", "later@d.test"]


def test_cancelled_campaign_fails_every_recipient() -> None:
    s = cancelled(record("a@d.test", "b@d.test"), NOW, "r")
    assert {(e.disposition, e.reason) for e in s.events} == {
        (Disposition.FAILED, "campaign_cancelled")
    }
    assert s.retry is None and not s.suppressions


def test_chunks_keep_order_and_bound_size() -> None:
    rcpts = [Recipient(address=f"u{i}@d.test") for i in range(5)]
    assert [[r.address[:2] for r in c] for c in chunks(rcpts, 2)] == [
        ["u0", "u1"],
        ["u2", "u3"],
        ["u4"],
    ]


def test_events_name_the_site_their_attempt_was_counted_under() -> None:
    """The warm-up ledgers that replay the events count each under the site the
    delivering relay knew (from the domain's MX hosts); an older event without
    the field still decodes, and encodes without it."""
    rec = record("a@d.test")
    result = TransactionResult({"a@d.test": reply(250, "ok")}, mx_host="mx1.hoster.test")
    s = settle(
        rec,
        [Transaction(rec.recipients, result)],
        egress_ip="127.0.0.2",
        now=NOW,
        retry=RETRY,
        relay_id="r",
        pool="ns/pool",
        site="hoster.test",
    )
    assert decode_event(encode(s.events[0])).site == "hoster.test"
    older = s.events[0].model_copy(update={"site": None})
    assert b'"site"' not in encode(older)
    assert decode_event(encode(older)).site is None
