"""Verdicts by SMTP stage and text (issue 10, findings 6, 9 and 11): the same code
means different things at the greeting, at RCPT and after the message."""

from __future__ import annotations

import pytest

from mailpipe.contracts.wire import Disposition
from mailpipe.relay.classify import classify, reply
from mailpipe.relay.ports import Stage

pytestmark = pytest.mark.faults

D, B = Disposition.DEFERRED, Disposition.BOUNCED

CASES = {
    # finding 9: Postfix's recipient refusals concern the recipient, never the IP;
    # issue 20 item 3: and a 5.7.1 says nothing about the address, so it does not
    # suppress at once (it was True here, the defect: 30 of 30 suppressed)
    "rcpt-access-denied": (
        Stage.RCPT,
        550,
        "5.7.1 <b@beta.test>: Recipient address rejected: Access denied",
        B,
        "recipient_refused",
        False,
        False,
    ),
    "rcpt-reject-default": (
        Stage.RCPT,
        554,
        "5.7.1 <b@beta.test>: Recipient address rejected",
        B,
        "recipient_refused",
        False,
        False,
    ),
    "rcpt-relay-denied": (
        Stage.RCPT,
        554,
        "5.7.1 <b@beta.test>: Relay access denied",
        B,
        "recipient_refused",
        False,
        False,
    ),
    # ... unless the text names the client's reputation (reject_rbl_client at RCPT)
    "rcpt-blocklist": (
        Stage.RCPT,
        554,
        "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        B,
        "policy_block",
        False,
        True,
    ),
    "rcpt-rate-limit": (Stage.RCPT, 450, "4.7.1 slow down", D, "rate_limited", False, False),
    # issue 21: a refused sender or a message judged spam is about the sender
    # or the message, not the IP's rate: resting the IP changes nothing (the
    # bounce rules give these classes no site action) ...
    "mail-policy": (Stage.MAIL, 550, "5.7.1 sender blocked", B, "policy_block", False, False),
    "message-policy": (
        Stage.MESSAGE,
        554,
        "5.7.1 message refused as spam",
        B,
        "policy_block",
        False,
        False,
    ),
    # ... while a receiver's words about the IP's rate act wherever they come
    "mail-rate": (
        Stage.MAIL,
        421,
        "4.7.0 too many connections from your IP",
        D,
        "service_unavailable",
        False,
        True,
    ),
    # finding 6: a 5xx greeting refuses the host, never suppresses the mailbox
    "greeting-5.1.1": (
        Stage.GREETING,
        554,
        "5.1.1 no service for you",
        B,
        "host_refused",
        False,
        False,
    ),
    "ehlo-refused": (Stage.EHLO, 550, "5.7.0 go away", B, "host_refused", False, False),
    "greeting-blocklist": (
        Stage.GREETING,
        554,
        "5.7.1 your IP is on a blocklist",
        B,
        "host_refused",
        False,
        True,
    ),
    # finding 11: greylisting is a retry, not a full mailbox
    "greylisted": (
        Stage.RCPT,
        450,
        "4.2.0 <a@d.test>: Recipient address rejected: Greylisted",
        D,
        "greylisted",
        False,
        False,
    ),
    # finding 10: a TLS failure is ours to retry, nobody blocked the IP
    "tls-failed": (Stage.TLS, 451, "4.7.5 TLS handshake failed", D, "tls_failed", False, False),
    # replies the relay synthesized never back off the IP
    "lost": (Stage.LOST, 451, "4.4.2 connection lost", D, "network_or_routing", False, False),
    "dns": (Stage.DNS, 451, "4.4.3 DNS timeout", D, "network_or_routing", False, False),
    # a connection-level 421 still rests the IP
    "connect-421": (
        Stage.CONNECT,
        421,
        "4.4.1 no MX host accepted a connection",
        D,
        "service_unavailable",
        False,
        True,
    ),
    "rcpt-550-5.1.1": (Stage.RCPT, 550, "5.1.1 no such user", B, "mailbox_unknown", True, False),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_verdict_by_stage_and_text(case: tuple[object, ...]) -> None:
    stage, code, text, disposition, reason, suppress, backoff = case
    verdict = classify(reply(code, text), stage)  # type: ignore[arg-type]
    assert (verdict.disposition, verdict.reason, verdict.suppress, verdict.backoff) == (
        disposition,
        reason,
        suppress,
        backoff,
    )
