"""Issue 22 Deliver 5: the TLS section of a SendingPool's status, from the relays' events.

Per site: recipients tried, how many over verified TLS, how many in clear,
the MTA-STS policy, the last protocol and failure; bounded whatever the
audience's domains; nothing written for a pool without TLS outcomes, nor
when the stored section already says the same.
"""

from __future__ import annotations

from mailpipe.contracts.tls_outcome import TLSFailure, TLSOutcome
from mailpipe.contracts.wire import Disposition, Event
from mailpipe.operator.tls_status import (
    MAX_REPORTED_SITES,
    MAX_TRACKED_SITES,
    OTHER_SITES,
    TLSTally,
    status_update,
)

VERIFIED = TLSOutcome(mode="mta-sts", policy="enforce", protocol="TLSv1.3", verified=True)
CLEAR = TLSOutcome(mode="opportunistic", failure=TLSFailure.STARTTLS_NOT_SUPPORTED)


def event(domain: str, tls: TLSOutcome | None) -> Event:
    return Event(
        message_id="m1",
        recipient=f"a@{domain}",
        domain=domain,
        disposition=Disposition.DELIVERED,
        time=1.0,
        tls=tls,
    )


def test_sites_say_verified_clear_and_the_last_failure() -> None:
    tally = TLSTally()
    for _ in range(3):
        tally.observe(event("big.test", VERIFIED))
    tally.observe(event("small.test", CLEAR))
    tally.observe(event("dns.test", None))  # no connection: nothing about TLS
    assert tally.report() == {
        "recipients": 4,
        "verified": 3,
        "clear": 1,
        "sites": [
            {
                "domain": "big.test",
                "recipients": 3,
                "verified": 3,
                "clear": 0,
                "lastProtocol": "TLSv1.3",
                "policy": "enforce",
            },
            {
                "domain": "small.test",
                "recipients": 1,
                "verified": 0,
                "clear": 1,
                "lastProtocol": "clear",
                "lastFailure": "starttls-not-supported",
            },
        ],
    }


def test_the_section_is_bounded_whatever_the_domains() -> None:
    tally = TLSTally()
    for i in range(MAX_TRACKED_SITES + 500):
        tally.observe(event(f"d{i}.test", CLEAR))
    report = tally.report()
    assert len(report["sites"]) == MAX_REPORTED_SITES
    assert report["sites"][0]["domain"] == OTHER_SITES  # the 500 late ones, together
    assert report["recipients"] == MAX_TRACKED_SITES + 500


def test_written_only_when_there_is_something_new() -> None:
    tally = TLSTally()
    assert status_update(None, None) is None
    assert status_update(tally, None) is None  # a quiet pool writes nothing
    tally.observe(event("big.test", VERIFIED))
    section = status_update(tally, None)
    assert section is not None and section["verified"] == 1
    assert status_update(tally, section) is None  # the stored one says it already
