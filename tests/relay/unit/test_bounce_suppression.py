"""Which bounces suppress (issue 20, item 3). A refused sender or a policy
refusal at RCPT says nothing about the recipient: it must not suppress the
address (ten valid recipients of a blocked sender once became ten
suppressions). Only address-bad classes suppress at once; policy refusals
suppress only past the rule file's threshold; every event carries its class."""

from __future__ import annotations

from mailpipe.contracts.bounces import STAGES, BounceRules, classifier_for
from mailpipe.contracts.config import RetrySettings
from mailpipe.contracts.strikes import SECONDS_PER_DAY, StrikeLedger
from mailpipe.contracts.wire import (
    Disposition,
    SuppressionReason,
    decode_event,
    decode_record,
    encode,
)
from mailpipe.relay.classify import reply
from mailpipe.relay.ports import Stage, TransactionResult
from mailpipe.relay.settlement import Settlement, Transaction, settle

from .conftest import record_bytes

NOW = 1_700_000_000.0
RETRY = RetrySettings(schedule_seconds=[60, 600], max_age_seconds=3600)
SENDER_REJECTED = "5.7.1 <x@sender.test>: Sender address rejected: Access denied"
LOCAL_POLICY = "5.7.1 Recipient rejected by local policy"


def attempt(
    addresses: list[str],
    code: int,
    text: str,
    *,
    stage: Stage = Stage.RCPT,
    now: float = NOW,
    strikes: StrikeLedger | None = None,
    pool_rules: BounceRules | None = None,
) -> Settlement:
    rec = decode_record(record_bytes(*addresses, created_at=now))
    r = reply(code, text)
    result = TransactionResult(
        dict.fromkeys(addresses, r), mx_host="mx.d.test", detail=dict.fromkeys(addresses, stage)
    )
    return settle(
        rec,
        [Transaction(rec.recipients, result)],
        egress_ip="127.0.0.2",
        now=now,
        retry=RETRY,
        relay_id="r",
        pool="ns/pool",
        classifier=classifier_for(pool_rules),
        strikes=strikes,
    )


def test_a_refused_sender_suppresses_none_of_its_ten_recipients() -> None:
    rcpts = [f"valid{i}@d.test" for i in range(10)]
    s = attempt(rcpts, 554, SENDER_REJECTED, strikes=StrikeLedger())
    assert s.suppressions == ()
    assert [(e.disposition, e.bounce_class) for e in s.events] == [
        (Disposition.BOUNCED, "invalid_sender")
    ] * 10


def test_a_refused_sender_never_suppresses_however_often() -> None:
    strikes = StrikeLedger()
    for day in range(10):
        s = attempt(["a@d.test"], 554, SENDER_REJECTED, now=NOW + day * 60, strikes=strikes)
        assert s.suppressions == ()
    assert len(strikes) == 0


def test_policy_refusal_at_rcpt_suppresses_on_the_third_within_seven_days() -> None:
    strikes = StrikeLedger()
    got = [
        attempt(["a@d.test"], 550, LOCAL_POLICY, now=NOW + i * SECONDS_PER_DAY, strikes=strikes)
        for i in range(3)
    ]
    assert [len(s.suppressions) for s in got] == [0, 0, 1]
    assert {e.bounce_class for s in got for e in s.events} == {"policy_related"}
    [sup] = got[2].suppressions
    assert sup.reason is SuppressionReason.HARD_BOUNCE
    assert sup.detail is not None and sup.detail.startswith("policy_related 3 times within 7 days")


def test_policy_refusals_further_apart_than_the_window_never_add_up() -> None:
    strikes = StrikeLedger()
    for i in range(6):
        s = attempt(
            ["a@d.test"], 550, LOCAL_POLICY, now=NOW + i * 4 * SECONDS_PER_DAY, strikes=strikes
        )
        assert s.suppressions == (), f"refusal {i + 1}, four days apart"


def test_an_unknown_mailbox_suppresses_at_once() -> None:
    s = attempt(["a@d.test"], 550, "5.1.1 <a@d.test>: Recipient address rejected: User unknown")
    assert [x.address for x in s.suppressions] == ["a@d.test"]
    assert s.suppressions[0].detail == (
        "invalid_recipient: 5.1.1 <a@d.test>: Recipient address rejected: User unknown"
    )
    assert s.events[0].bounce_class == "invalid_recipient"


def test_a_deferral_carries_its_class_and_never_suppresses() -> None:
    s = attempt(
        ["a@d.test"], 450, "4.1.2 <a@nx.test>: Recipient address rejected: Domain not found"
    )
    assert [(e.disposition, e.bounce_class) for e in s.events] == [
        (Disposition.DEFERRED, "bad_domain")
    ]
    assert s.suppressions == ()


def test_a_pool_can_make_a_policy_class_suppress_at_once() -> None:
    pool = BounceRules.model_validate({"suppression": {"policy_related": {"after": 1}}})
    s = attempt(["a@d.test"], 550, LOCAL_POLICY, pool_rules=pool)
    assert len(s.suppressions) == 1


def test_the_ledger_forgets_the_oldest_address_beyond_its_bound() -> None:
    pool = classifier_for(None)
    policy = pool.suppression(pool.classify(550, "5.7.1", LOCAL_POLICY, "rcpt").bounce_class)
    assert policy is not None
    strikes = StrikeLedger(max_entries=2)
    for name in ("a", "b", "c"):
        strikes.strike(
            f"{name}@d.test", pool.classify(550, "5.7.1", LOCAL_POLICY).bounce_class, policy, NOW
        )
    assert len(strikes) == 2


def test_rule_stages_are_the_relays_stages() -> None:
    assert set(STAGES) == {s.value for s in Stage}


def test_an_event_without_a_class_still_decodes_and_one_with_it_round_trips() -> None:
    old = (
        b'{"v":1,"message_id":"m","recipient":"a@d.test","domain":"d.test",'
        b'"disposition":"bounced","time":1}'
    )
    assert decode_event(old).bounce_class is None
    ev = attempt(["a@d.test"], 554, SENDER_REJECTED).events[0]
    assert decode_event(encode(ev)).bounce_class == "invalid_sender"
