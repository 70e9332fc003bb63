"""The packaged bounce rules (issue 20, item 3): one table case per rule, with
reply texts as Postfix, Exim, Gmail, Microsoft and Yahoo send them, and a check
that every rule in the file is the one that decides at least one case."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailpipe.contracts.bounces import (
    BounceClass,
    BounceRules,
    BounceRulesError,
    Classification,
    SuppressionPolicy,
    default_classifier,
    default_rules,
    parse_rules,
)

from .test_reply_actions import ACTION_CASES

C = BounceClass

# (stage, code, enhanced code, text, class)
CASES: dict[str, tuple[str | None, int, str | None, str, BounceClass]] = {
    # replies the relay made up itself
    "relay-tls": ("tls", 451, "4.7.5", "4.7.5 STARTTLS required by policy", C.TLS_FAILURE),
    "relay-size": (
        "local",
        552,
        "5.3.4",
        "5.3.4 message is 30000000 bytes, limit 10000",
        C.MESSAGE_TOO_LARGE,
    ),
    "relay-smtputf8": (
        "local",
        553,
        "5.6.7",
        "5.6.7 mx.test does not offer SMTPUTF8",
        C.PROTOCOL_ERROR,
    ),
    "relay-dns-timeout": ("dns", 451, "4.4.3", "4.4.3 DNS lookup failed: timeout", C.ROUTING_ERROR),
    "relay-lost": ("lost", 451, "4.4.2", "4.4.2 connection lost", C.ROUTING_ERROR),
    "relay-unroutable": (
        "dns",
        550,
        "5.4.4",
        "5.4.4 no MX and no address for d.test",
        C.ROUTING_ERROR,
    ),
    # wording that names the cause
    "postgrey": (
        "rcpt",
        450,
        "4.2.0",
        (
            "4.2.0 <a@d.test>: Recipient address rejected: Greylisted, see"
            " http://postgrey.schweikert.ch/help/d.test.html"
        ),
        C.GREYLISTED,
    ),
    "postfix-sender-rejected": (
        "rcpt",
        554,
        "5.7.1",
        "5.7.1 <x@sender.test>: Sender address rejected: Access denied",
        C.INVALID_SENDER,
    ),
    "postfix-sender-domain": (
        "rcpt",
        450,
        "4.1.8",
        "4.1.8 <x@sender.test>: Sender address rejected: Domain not found",
        C.INVALID_SENDER,
    ),
    "sender-domain": (
        "rcpt",
        550,
        "5.7.1",
        "5.7.1 Sender domain sender.test does not exist",
        C.INVALID_SENDER,
    ),
    "exim-sender-verify": ("rcpt", 550, None, "Sender verify failed", C.INVALID_SENDER),
    "bad-sender-syntax": (
        "mail",
        553,
        "5.1.7",
        "5.1.7 The sender address is malformed",
        C.INVALID_SENDER,
    ),
    "gmail-rate": (
        "rcpt",
        450,
        "4.2.1",
        (
            "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents"
            " additional messages from being delivered."
        ),
        C.RATE_LIMITED,
    ),
    "yahoo-tss04": (
        "mail",
        421,
        "4.7.0",
        (
            "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume"
            " or user complaints"
        ),
        C.RATE_LIMITED,
    ),
    "gmail-4.7.28": (
        "message",
        421,
        "4.7.28",
        (
            "4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from your"
            " DKIM domain"
        ),
        C.RATE_LIMITED,
    ),
    "gmail-dmarc": (
        "message",
        550,
        "5.7.26",
        (
            "5.7.26 Unauthenticated email from sender.test is not accepted due to domain's DMARC"
            " policy."
        ),
        C.AUTHENTICATION_FAILED,
    ),
    "gmail-ptr": (
        "message",
        550,
        "5.7.25",
        "5.7.25 The IP address sending this message does not have a PTR record setup",
        C.AUTHENTICATION_FAILED,
    ),
    "microsoft-515": (
        "message",
        550,
        "5.7.515",
        (
            "5.7.515 Access denied, sending domain sender.test does not meet the required"
            " authentication level."
        ),
        C.AUTHENTICATION_FAILED,
    ),
    "spf-text": (
        "message",
        550,
        "5.7.1",
        "5.7.1 Message rejected: SPF check failed",
        C.AUTHENTICATION_FAILED,
    ),
    "postfix-rbl": (
        "rcpt",
        554,
        "5.7.1",
        "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        C.REPUTATION,
    ),
    "microsoft-banned-ip": (
        "rcpt",
        550,
        "5.7.606",
        "5.7.606 Access denied, banned sending IP [192.0.2.1]",
        C.REPUTATION,
    ),
    "yahoo-tss09": (
        "mail",
        553,
        "5.7.2",
        (
            "5.7.2 [TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will"
            " NOT succeed"
        ),
        C.REPUTATION,
    ),
    "greeting-blocklist": (
        "greeting",
        554,
        "5.7.1",
        "5.7.1 your IP is on a blocklist",
        C.REPUTATION,
    ),
    "greeting-refused": ("greeting", 554, "5.1.1", "5.1.1 no service for you", C.HOST_REFUSED),
    "ehlo-refused": ("ehlo", 550, "5.7.0", "5.7.0 go away", C.HOST_REFUSED),
    "connect-421": (
        "connect",
        421,
        "4.4.1",
        "4.4.1 no MX host accepted a connection",
        C.ROUTING_ERROR,
    ),
    "gmail-size": (
        "message",
        552,
        "5.2.3",
        "5.2.3 Your message exceeded Google's message size limits.",
        C.MESSAGE_TOO_LARGE,
    ),
    "exim-size": (
        "message",
        552,
        None,
        "Message size exceeds maximum permitted",
        C.MESSAGE_TOO_LARGE,
    ),
    "postfix-domain-not-found": (
        "rcpt",
        450,
        "4.1.2",
        "4.1.2 <a@nx.test>: Recipient address rejected: Domain not found",
        C.BAD_DOMAIN,
    ),
    "microsoft-not-found": (
        "rcpt",
        550,
        "5.1.10",
        "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        C.INVALID_RECIPIENT,
    ),
    "gmail-no-such": (
        "rcpt",
        550,
        "5.1.1",
        (
            "5.1.1 The email account that you tried to reach does not exist. Please try"
            " double-checking the recipient's email address for typos"
        ),
        C.INVALID_RECIPIENT,
    ),
    "yahoo-no-account": (
        "rcpt",
        554,
        None,
        (
            "delivery error: dd This user doesn't have a yahoo.com account (a@yahoo.com) [0] -"
            " mta1234.mail.yahoo.com"
        ),
        C.INVALID_RECIPIENT,
    ),
    "exim-unrouteable": ("rcpt", 550, None, "Unrouteable address", C.INVALID_RECIPIENT),
    "postfix-user-unknown": (
        "rcpt",
        550,
        "5.1.1",
        "5.1.1 <a@d.test>: Recipient address rejected: User unknown in virtual mailbox table",
        C.INVALID_RECIPIENT,
    ),
    "microsoft-dbeb": (
        "rcpt",
        550,
        "5.4.1",
        "5.4.1 Recipient address rejected: Access denied. AS(201806281)",
        C.INVALID_RECIPIENT,
    ),
    "gmail-disabled": (
        "rcpt",
        550,
        "5.2.1",
        "5.2.1 The email account that you tried to reach is disabled.",
        C.INACTIVE_MAILBOX,
    ),
    "gmail-over-quota": (
        "rcpt",
        452,
        "4.2.2",
        "4.2.2 The email account that you tried to reach is over quota.",
        C.MAILBOX_FULL,
    ),
    "exim-full": ("rcpt", 552, None, "Mailbox is full", C.MAILBOX_FULL),
    "postfix-relay-denied": (
        "rcpt",
        554,
        "5.7.1",
        "5.7.1 <b@beta.test>: Relay access denied",
        C.RELAYING_DENIED,
    ),
    "gmail-unsolicited": (
        "message",
        550,
        "5.7.1",
        "5.7.1 Our system has detected that this message is likely unsolicited mail.",
        C.SPAM_RELATED,
    ),
    "gmail-content": (
        "message",
        552,
        "5.7.0",
        "5.7.0 This message was blocked because its content presents a potential security issue.",
        C.CONTENT_RELATED,
    ),
    "exim-virus": (
        "message",
        550,
        None,
        "This message contains a virus (Eicar-Test-Signature)",
        C.CONTENT_RELATED,
    ),
    # the code when the text says nothing more
    "null-mx": ("dns", 556, "5.1.10", "5.1.10 d.test does not accept mail (null MX)", C.BAD_DOMAIN),
    "no-such-domain": ("dns", 550, "5.1.2", "5.1.2 nx.test: NXDOMAIN", C.BAD_DOMAIN),
    "bare-5.1.1": ("rcpt", 550, "5.1.1", "5.1.1 <a@d.test>", C.INVALID_RECIPIENT),
    "bare-5.2.1": ("rcpt", 550, "5.2.1", "5.2.1 <a@d.test>", C.INACTIVE_MAILBOX),
    "bare-5.2.2": ("message", 552, "5.2.2", "5.2.2 <a@d.test>", C.MAILBOX_FULL),
    "mail-refused": ("mail", 550, "5.7.1", "5.7.1 go away", C.INVALID_SENDER),
    "data-policy": (
        "message",
        550,
        "5.7.1",
        "5.7.1 Message refused by local policy",
        C.CONTENT_RELATED,
    ),
    "media": ("rcpt", 554, "5.6.0", "5.6.0 something about media", C.CONTENT_RELATED),
    "microsoft-busy": (
        "rcpt",
        451,
        "4.7.500",
        "4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714)",
        C.RATE_LIMITED,
    ),
    "rcpt-local-policy": (
        "rcpt",
        550,
        "5.7.1",
        "5.7.1 Recipient rejected by local policy",
        C.POLICY_RELATED,
    ),
    "postfix-access-denied": (
        "rcpt",
        550,
        "5.7.1",
        "5.7.1 <b@beta.test>: Recipient address rejected: Access denied",
        C.POLICY_RELATED,
    ),
    "exim-admin-prohibition": ("rcpt", 550, None, "Administrative prohibition", C.POLICY_RELATED),
    "bad-sequence": ("rcpt", 503, "5.5.1", "5.5.1 Error: need MAIL command", C.PROTOCOL_ERROR),
    "protocol-status": ("message", 554, "5.5.0", "5.5.0 what was that", C.PROTOCOL_ERROR),
    "nonsense-code": (None, 999, None, "what", C.PROTOCOL_ERROR),
    "network-status": ("rcpt", 554, "5.4.7", "5.4.7 delivery time expired", C.ROUTING_ERROR),
    "rfc5321-550": (
        None,
        550,
        None,
        "Requested action not taken: mailbox unavailable here",
        C.INVALID_RECIPIENT,
    ),
    "rfc5321-551": (
        "rcpt",
        551,
        None,
        "User not local; please try <x@y.test>",
        C.INVALID_RECIPIENT,
    ),
    "try-later": ("rcpt", 451, "4.3.0", "4.3.0 try later", C.TRANSIENT),
    "other": ("message", 554, "5.0.0", "5.0.0 transaction failed", C.OTHER),
}


def decide(case: tuple[str | None, int, str | None, str, BounceClass]) -> Classification:
    stage, code, enhanced, text, _ = case
    return default_classifier().classify(code, enhanced, text, stage)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_each_reply_gets_its_class(
    case: tuple[str | None, int, str | None, str, BounceClass],
) -> None:
    assert decide(case).bounce_class == case[4]


def test_every_rule_decides_some_case() -> None:
    rules = default_classifier().rules
    with_actions = [c[:5] for c in ACTION_CASES.values()]  # the rules that act on a site
    hit = {id(decide(c).rule) for c in [*CASES.values(), *with_actions]}
    unused = [
        f"{i}: {r.bounce_class} {r.description}" for i, r in enumerate(rules) if id(r) not in hit
    ]
    assert unused == [], "rules without a table case"


def test_only_address_classes_suppress_at_once() -> None:
    at_once = {c for c, p in default_rules().suppression.items() if p.after == 1}
    assert at_once == {C.INVALID_RECIPIENT, C.BAD_DOMAIN, C.INACTIVE_MAILBOX}
    for never in (
        C.INVALID_SENDER,
        C.REPUTATION,
        C.SPAM_RELATED,
        C.CONTENT_RELATED,
        C.RATE_LIMITED,
    ):
        assert default_classifier().suppression(never) is None
    assert default_rules().suppression[C.POLICY_RELATED] == SuppressionPolicy(
        after=3, within_days=7
    )


def test_a_pool_rule_comes_before_the_defaults() -> None:
    pool = BounceRules.model_validate(
        {
            "rules": [{"bounceClass": "reputation", "codes": ["550"], "text": "local policy"}],
            "suppression": {"policy_related": {"after": 1}},
        }
    )
    mine = default_classifier().extended(pool)
    text = "5.7.1 Recipient rejected by local policy"
    assert mine.classify(550, "5.7.1", text, "rcpt").bounce_class == C.REPUTATION
    assert (
        default_classifier().classify(550, "5.7.1", text, "rcpt").bounce_class == C.POLICY_RELATED
    )
    assert mine.suppression(C.POLICY_RELATED) == SuppressionPolicy(after=1)
    assert mine.suppression(C.INVALID_RECIPIENT) == SuppressionPolicy(after=1)  # defaults kept


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rules: [{bounceClass: other, code: [550]}]", "code: Extra inputs are not permitted"),
        ("rules: [{bounceClass: nonsense, codes: [550]}]", "bounceClass"),
        ("rules: [{bounceClass: other}]", "needs at least one of codes, enhanced, stages, text"),
        ("rules: [{bounceClass: other, text: '(unclosed'}]", "not a regular expression"),
        ("rules: [{bounceClass: other, enhanced: ['5.1']}]", "enhanced.0"),
        ("rules: [{bounceClass: other, stages: [helo]}]", "stages.0"),
        ("suppression: {other: {after: 0}}", "after"),
        ("suppression: {policy: {after: 1}}", "unknown bounce class policy"),
        ("surpression: {}", "surpression: Extra inputs are not permitted"),
        ("[1, 2]", "expected a mapping"),
    ],
)
def test_a_bad_rule_file_is_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(
        BounceRulesError, match="^bounce_rules.yaml: .*" + problem.replace("(", r"\(")
    ):
        parse_rules(text)


@given(
    code=st.integers(min_value=-10, max_value=1200),
    enhanced=st.none() | st.text(max_size=12),
    text=st.text(max_size=300),
    stage=st.none() | st.sampled_from(["rcpt", "mail", "greeting", "data", "bogus"]),
)
def test_any_reply_gets_a_class(
    code: int, enhanced: str | None, text: str, stage: str | None
) -> None:
    assert isinstance(
        default_classifier().classify(code, enhanced, text, stage).bounce_class, BounceClass
    )
