"""Verdicts against a real relay (issue 10, finding 9): a recipient refused at RCPT
is bounced, and the sending IP is not rested for the whole domain. A 5.7.1 policy
refusal does not suppress the address at once (issue 20, item 3)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from mailpipe.devstack.smtp_receiver import SMTPReceiver

from .conftest import Pool, RelayProcess, wait_for

pytestmark = [pytest.mark.relay, pytest.mark.faults]

HEALTHY_WITHIN_SECONDS = 20  # a back-off would rest the IP for 60 s first


def test_a_recipient_refused_at_rcpt_does_not_rest_the_ip(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., RelayProcess],
) -> None:
    rx, pool = routed_pool("beta.test")
    refused = "b003@beta.test"
    rx.answer(refused, f"550 5.7.1 <{refused}>: Recipient address rejected: Access denied")
    relay = relays(pool)
    pool.send(refused)
    pool.flush()
    wait_for(lambda: len(pool.events()) == 1, 60, "the refusal", relay)
    for i in range(10):
        pool.send(f"ok{i}@beta.test")
    pool.flush()
    # The deadline is the claim: a rested IP would deliver nothing for 60 s.
    wait_for(lambda: len(rx.recipients()) == 10, HEALTHY_WITHIN_SECONDS, "10 deliveries", relay)
    got = Counter((e["recipient"], e["disposition"]) for e in pool.events())
    assert got[(refused, "bounced")] == 1
    assert sum(n for (_, d), n in got.items() if d == "delivered") == 10
    assert (
        pool.read(pool.config.kafka.suppressions_topic) == []
    )  # a policy refusal, not the address
