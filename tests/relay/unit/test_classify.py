from __future__ import annotations

import pytest

from mailpipe.contracts.wire import Disposition
from mailpipe.relay.classify import classify, enhanced_code, reply


@pytest.mark.parametrize(
    ("code", "text", "outcome", "reason", "suppress", "backoff"),
    [
        (250, "2.0.0 OK", Disposition.DELIVERED, "accepted", False, False),
        (451, "4.3.0 try later", Disposition.DEFERRED, "temporary_failure", False, False),
        (
            421,
            "4.7.0 too many connections",
            Disposition.DEFERRED,
            "service_unavailable",
            False,
            True,
        ),
        (450, "4.7.1 rate limited", Disposition.DEFERRED, "rate_limited", False, True),
        (452, "4.2.2 mailbox full", Disposition.DEFERRED, "mailbox_busy_or_full", False, False),
        (550, "5.1.1 no such user", Disposition.BOUNCED, "mailbox_unknown", True, False),
        (556, "5.1.10 null MX", Disposition.BOUNCED, "mailbox_unknown", True, False),
        (550, "no such user here", Disposition.BOUNCED, "mailbox_unknown", True, False),
        # issue 21: whether a reply acts on the site is the bounce rules' data; a
        # policy refusal that names no rate or reputation does not
        (554, "5.7.1 blocked by policy", Disposition.BOUNCED, "policy_block", False, False),
        (552, "5.2.2 over quota", Disposition.BOUNCED, "mailbox_or_system_full", False, False),
        (554, "transaction failed", Disposition.BOUNCED, "permanent_failure", False, False),
        (999, "what", Disposition.DEFERRED, "invalid_reply", False, False),
    ],
    ids=lambda v: str(v) if not isinstance(v, Disposition) else v.name,
)
def test_classification_table(
    code: int, text: str, outcome: Disposition, reason: str, suppress: bool, backoff: bool
) -> None:
    verdict = classify(reply(code, text))
    assert (verdict.disposition, verdict.reason, verdict.suppress, verdict.backoff) == (
        outcome,
        reason,
        suppress,
        backoff,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5.1.10 null MX", "5.1.10"), ("4.7.1 slow", "4.7.1"), ("OK", None), ("6.1.1 bogus", None)],
)
def test_enhanced_code_parsing(text: str, expected: str | None) -> None:
    assert enhanced_code(text) == expected
