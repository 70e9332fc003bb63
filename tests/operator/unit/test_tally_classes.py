"""Campaign status counts per bounce class (issue 20, item 3): the latest
disposition of each recipient, bounced or deferred, under the class its event
carried, so a campaign's status says what its bounces were about."""

from __future__ import annotations

from mailpipe.contracts.wire import Disposition, Event
from mailpipe.operator.tally import Tally

B, D, OK = Disposition.BOUNCED, Disposition.DEFERRED, Disposition.DELIVERED


def ev(rcpt: str, disposition: Disposition, t: float, bounce_class: str | None) -> Event:
    return Event(
        message_id=f"m-{rcpt}",
        campaign="ns/c",
        recipient=rcpt,
        domain="x.test",
        disposition=disposition,
        time=t,
        bounce_class=bounce_class,
    )


def test_bounces_and_deferrals_are_counted_per_class_by_latest_disposition() -> None:
    tally = Tally()
    for e in [
        ev("a@x.test", D, 1, "greylisted"),
        ev("a@x.test", OK, 2, None),  # delivered later: no longer a deferral
        ev("b@x.test", B, 1, "invalid_sender"),
        ev("c@x.test", B, 1, "invalid_sender"),
        ev("d@x.test", D, 1, "mailbox_full"),
        ev("d@x.test", B, 5, "invalid_recipient"),
        ev("e@x.test", B, 1, None),  # written before events carried a class
        ev("f@x.test", D, 1, "rate_limited"),
    ]:
        tally.observe(e)
    assert tally.by_class("ns/c", B) == {
        "invalid_recipient": 1,
        "invalid_sender": 2,
        "unclassified": 1,
    }
    assert tally.by_class("ns/c", D) == {"rate_limited": 1}
    assert tally.counts("ns/c")["bounced"] == 4
    assert tally.by_class("ns/other", B) == {}
