"""Bounce classes against a real relay (issue 20, item 3). Postfix refuses a
blocked sender at RCPT time by default (`554 5.7.1 <x@sender>: Sender address
rejected`): that says nothing about the recipients, so ten of them bounce with
the class `invalid_sender` and none is suppressed (all ten were before)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mailpipe.devstack.smtp_receiver import SMTPReceiver

from .conftest import Pool, RelayProcess, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.faults]

SENDER_REJECTED = "554 5.7.1 <x@sender.test>: Sender address rejected: Access denied"


def test_a_refused_sender_bounces_ten_recipients_and_suppresses_none(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., RelayProcess],
) -> None:
    rx, pool = routed_pool("beta.test")
    valid = [f"valid{i}@beta.test" for i in range(10)]
    for rcpt in valid:
        rx.answer(rcpt, SENDER_REJECTED)
    unknown = "gone@beta.test"
    rx.answer(unknown, f"550 5.1.1 <{unknown}>: Recipient address rejected: User unknown")
    relay = relays(pool)
    pool.send(*valid)
    pool.flush()
    wait_for(lambda: len(pool.events()) == 10, 60, "10 bounces", relay)
    got = {e["recipient"]: (e["disposition"], e.get("bounce_class")) for e in pool.events()}
    assert got == dict.fromkeys(valid, ("bounced", "invalid_sender"))
    # A later record whose bounce does suppress: once its suppression is on the
    # topic, everything the first record caused is there too.
    pool.send(unknown)
    pool.flush()
    suppressions = pool.config.kafka.suppressions_topic
    wait_for(
        lambda: len(pool.read(suppressions)) > 0, 60, "the unknown mailbox's suppression", relay
    )
    assert [k for k, _ in pool.read(suppressions)] == [unknown.encode()]
    [last] = [e for e in pool.events() if e["recipient"] == unknown]
    assert (last["disposition"], last["bounce_class"]) == ("bounced", "invalid_recipient")
