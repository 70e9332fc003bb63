"""The pure parts of `kubectl mailpipe`: suppressions, fates, arguments, tables."""

from __future__ import annotations

import pytest

from mailpipe.cli.kubectl import build_parser
from mailpipe.cli.kubectl.records import (
    UNDECODABLE,
    UsageError,
    campaign_key,
    checked_address,
    fates,
    live_suppressions,
    matching,
    suppression_record,
    table,
    tombstones,
)
from mailpipe.contracts.wire import (
    Disposition,
    Event,
    Suppression,
    SuppressionReason,
    decode_suppression,
    encode,
)

T0 = 1_790_000_000.0


def _suppression(address: str, reason: SuppressionReason = SuppressionReason.HARD_BOUNCE) -> bytes:
    return encode(Suppression(address=address, reason=reason, time=T0, source="mail/news"))


def test_a_suppression_is_keyed_as_the_relays_key_it() -> None:
    key, value = suppression_record("Bob@Example.COM", SuppressionReason.MANUAL, "asked", T0)
    assert key == b"bob@example.com"
    assert value is not None
    s = decode_suppression(value)
    assert (s.address, s.reason, s.detail, s.source) == (
        "bob@example.com",
        SuppressionReason.MANUAL,
        "asked",
        "kubectl-mailpipe",
    )


@pytest.mark.parametrize("bad", ["no-at-sign", "a@b\r\nBcc: x@y", "a b@c", "<a@b>", "@b", "a@"])
def test_only_plain_mailboxes_are_accepted(bad: str) -> None:
    with pytest.raises(UsageError, match="not a plain mailbox"):
        checked_address(bad)


def test_live_suppressions_apply_tombstones_and_keep_undecodable_keys() -> None:
    live = live_suppressions(
        [
            (b"a@x.test", _suppression("a@x.test")),
            (b"b@x.test", _suppression("b@x.test")),
            (b"a@x.test", None),  # lifted
            (b"c@x.test", b"{not json"),  # the relay still suppresses this key
            (None, _suppression("nokey@x.test")),  # no key: not a suppression of anyone
        ]
    )
    assert sorted(live) == ["b@x.test", "c@x.test"]
    assert live["c@x.test"].reason == UNDECODABLE
    assert live["b@x.test"].reason == "hard_bounce"


def test_lifting_tombstones_every_live_key_of_the_address() -> None:
    """A suppression keyed by its mixed-case spelling is not lifted by a
    tombstone on the lower-cased key (the hand-made way): it would come back at
    the next relay start. The plugin tombstones every key naming the mailbox."""
    records = [
        (b"Bob@X.test", _suppression("Bob@X.test")),  # another producer's spelling
        (b"bob@x.test", _suppression("bob@x.test", SuppressionReason.COMPLAINT)),
        (b"carol@x.test", _suppression("carol@x.test")),
    ]
    hand_made = live_suppressions([*records, (b"bob@x.test", None)])
    assert matching("bob@x.test", hand_made), "the hand-made tombstone leaves one behind"

    live = live_suppressions(records)
    lifted = tombstones("BOB@x.test", live)
    assert lifted == [(b"Bob@X.test", None), (b"bob@x.test", None)]
    after = live_suppressions([*records, *lifted])
    assert matching("bob@x.test", after) == []
    assert [e.key for e in after.values()] == ["carol@x.test"]
    assert tombstones("nobody@x.test", live) == []


def _event(
    disposition: Disposition,
    t: float,
    *,
    recipient: str = "a@x.test",
    campaign: str | None = "mail/spring",
    attempt: int = 0,
    code: int | None = None,
    reply: str | None = None,
) -> Event:
    return Event(
        message_id=f"m-{recipient}",
        campaign=campaign,
        recipient=recipient,
        domain="x.test",
        disposition=disposition,
        time=t,
        attempt=attempt,
        smtp_code=code,
        reply=reply,
    )


def test_a_fate_is_each_attempt_in_order_and_the_last_word() -> None:
    events = [
        _event(Disposition.DELIVERED, T0 + 60, attempt=1, code=250, reply="2.0.0 Ok: queued"),
        _event(Disposition.DEFERRED, T0, code=451, reply="4.7.1 try later"),
        _event(Disposition.DELIVERED, T0, recipient="b@x.test", code=250),  # someone else
        _event(Disposition.BOUNCED, T0 + 5, campaign="mail/autumn", code=550, reply="no user"),
    ]
    found = fates(events, "A@X.test")
    assert [f.campaign for f in found] == ["mail/spring", "mail/autumn"]
    spring, autumn = found
    assert [a.disposition for a in spring.attempts] == [Disposition.DEFERRED, Disposition.DELIVERED]
    assert spring.final and autumn.final
    assert spring.summary() == (
        "delivered at 2026-09-21T14:14:20Z after 2 attempt(s): 250 2.0.0 Ok: queued"
    )
    assert autumn.summary().endswith("550 no user")
    only = fates(events, "a@x.test", campaign="mail/autumn")
    assert [f.campaign for f in only] == ["mail/autumn"]


def test_a_deferral_is_not_a_fate_yet() -> None:
    [f] = fates([_event(Disposition.DEFERRED, T0, code=421, reply="busy")], "a@x.test")
    assert not f.final
    assert f.summary().startswith("deferred, will be retried at")


def test_campaign_keys_are_namespaced_names() -> None:
    assert campaign_key("mail", "spring") == "mail/spring"
    assert campaign_key("mail", "other/spring") == "other/spring"


def test_common_options_are_taken_before_and_after_the_subcommand() -> None:
    """kubectl passes a plugin its arguments as typed: `-n` may come first or last."""
    parser = build_parser()
    before = parser.parse_args(["-n", "mail", "--pool", "news", "suppress", "a@x.test"])
    after = parser.parse_args(["suppress", "a@x.test", "-n", "mail", "--pool", "news"])
    for args in (before, after):
        assert (args.namespace, args.pool, args.addresses) == ("mail", "news", ["a@x.test"])
    listed = parser.parse_args(["suppressions", "list", "-o", "json", "--reason", "manual"])
    assert (listed.output, listed.reason) == ("json", "manual")
    with pytest.raises(SystemExit):
        parser.parse_args(["suppress", "a@x.test", "--reason", "because"])


def test_tables_align_like_kubectl() -> None:
    assert table(["A", "LONGER"], [["xxxx", "y"], ["z", ""]]).splitlines() == [
        "A      LONGER",
        "xxxx   y",
        "z",
    ]
