"""Reply rules act on sites (issue 21, "Replies drive shaping, as data"): every
default rule with an action matches its provider's real reply text, and the
neighbouring replies - another provider's wording, the same provider's reply
about one recipient - get another rule (no action, or another one). The
texts are the providers' own, as their postmaster pages quote them; the
cited page is beside each rule in `bounce_rules.yaml`."""

from __future__ import annotations

import pytest

from mailpipe.contracts.bounces import (
    ActionKind,
    BounceClass,
    BounceRules,
    BounceRulesError,
    ReplyAction,
    default_classifier,
    parse_rules,
)

C = BounceClass
SUSPEND, SLOW = ActionKind.SUSPEND, ActionKind.SLOW
IP = "203.0.113.5"

# name -> (stage, code, enhanced, text, class, action kind or None, duration or None)
Case = tuple[str | None, int, str | None, str, BounceClass, ActionKind | None, int | None]
ACTION_CASES: dict[str, Case] = {
    # Gmail, support.google.com/a/answer/3726730: the multi-line reply as the
    # relay reads it (the code stripped from each line)
    "gmail-4.7.28-ip": (
        "data",
        421,
        "4.7.28",
        f"4.7.28 [{IP}] Our system has detected an unusual rate of\n4.7.28 unsolicited mail"
        " originating from your IP address. To protect our\n4.7.28 users from spam, mail sent"
        " from your IP address has been temporarily\n4.7.28 rate limited. Please visit\n4.7.28"
        " https://support.google.com/mail/?p=UnsolicitedRateLimitError to\n4.7.28 review our Bulk"
        " Email Senders Guidelines. - gsmtp",
        C.RATE_LIMITED,
        SUSPEND,
        1800,
    ),
    "gmail-4.7.28-dkim": (
        "message",
        421,
        "4.7.28",
        "4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from your"
        " DKIM domain [sender.test]. To protect our users from spam, mail sent from your domain"
        " has been temporarily rate limited.",
        C.RATE_LIMITED,
        SUSPEND,
        1800,
    ),
    "gmail-4.7.0-ip-reputation": (
        "rcpt",
        421,
        "4.7.0",
        f"4.7.0 [{IP}] Our system has detected that this message is suspicious due to the very"
        " low reputation of the sending IP address. To protect our users from spam, mail sent"
        " from your IP address has been temporarily rate limited.",
        C.RATE_LIMITED,
        SUSPEND,
        1800,
    ),
    # ... and its neighbours: the 421-4.7.0 about one message's content, one
    # recipient receiving too fast, one mailbox over quota: never a site action
    "gmail-4.7.0-content": (
        "message",
        421,
        "4.7.0",
        f"4.7.0 [{IP}] Our system has detected that this message is suspicious due to the nature"
        " of the content and/or the links within. To best protect our users from spam, the"
        " message has been blocked.",
        C.SPAM_RELATED,
        None,
        None,
    ),
    "gmail-4.2.1-one-user": (
        "rcpt",
        450,
        "4.2.1",
        "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents"
        " additional messages from being delivered. Please resend your message at a later time.",
        C.RATE_LIMITED,
        None,
        None,
    ),
    "gmail-4.2.2-over-quota": (
        "rcpt",
        452,
        "4.2.2",
        "4.2.2 The email account that you tried to reach is over quota. Please direct the"
        " recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp",
        C.MAILBOX_FULL,
        None,
        None,
    ),
    # Microsoft, sendersupport.olc.protection.outlook.com/pm/troubleshooting.aspx
    "microsoft-4.7.650": (
        "mail",
        451,
        "4.7.650",
        f"4.7.650 The mail server [{IP}] has been temporarily rate limited due to IP reputation."
        " For e-mail delivery information, see https://postmaster.live.com (S775)",
        C.RATE_LIMITED,
        SLOW,
        3600,
    ),
    "microsoft-rp-001": (
        "mail",
        421,
        None,
        f"RP-001 (BAY004-MC1F41) Unfortunately, some messages from {IP} weren't sent. Please"
        " try again. We have limits for how many messages can be sent per hour and per day.",
        C.RATE_LIMITED,
        SLOW,
        3600,
    ),
    "microsoft-s3150": (
        "mail",
        550,
        "5.7.1",
        f"5.7.1 Unfortunately, messages from [{IP}] weren't sent. Please contact your Internet"
        " service provider since part of their network is on our block list (S3150). You can"
        " also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.",
        C.REPUTATION,
        SUSPEND,
        14400,
    ),
    "microsoft-5.7.606": (
        "rcpt",
        550,
        "5.7.606",
        f"5.7.606 Access denied, banned sending IP [{IP}]. To request removal from this list"
        " please visit https://sender.office.com/ and follow the directions.",
        C.REPUTATION,
        SUSPEND,
        14400,
    ),
    # Yahoo, senders.yahooinc.com/smtp-error-codes/
    "yahoo-tss04": (
        "mail",
        421,
        "4.7.0",
        f"4.7.0 [TSS04] Messages from {IP} temporarily deferred due to unexpected volume or user"
        " complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        C.RATE_LIMITED,
        SUSPEND,
        3600,
    ),
    "yahoo-ts01": (
        "greeting",
        421,
        "4.7.0",
        f"4.7.0 [TS01] Messages from {IP} temporarily deferred due to user complaints - 4.16.55.1",
        C.RATE_LIMITED,
        SUSPEND,
        3600,
    ),
    "yahoo-tss09": (
        "mail",
        553,
        "5.7.2",
        f"5.7.2 [TSS09] All messages from {IP} will be permanently deferred; Retrying will NOT"
        " succeed. See https://postmaster.yahooinc.com/error-codes",
        C.REPUTATION,
        SUSPEND,
        14400,
    ),
    # DNS blocklists: Postfix default_rbl_reply, postfix.org/postconf.5.html
    "spamhaus": (
        "rcpt",
        554,
        "5.7.1",
        f"5.7.1 Service unavailable; Client host [{IP}] blocked using zen.spamhaus.org;"
        f" https://www.spamhaus.org/query/ip/{IP}",
        C.REPUTATION,
        SUSPEND,
        3600,
    ),
    "spamcop": (
        "greeting",
        554,
        None,
        f"Service unavailable; Client host [{IP}] blocked using bl.spamcop.net",
        C.REPUTATION,
        SUSPEND,
        3600,
    ),
    # the old code-decided back-offs, now data: a rate limit anywhere but RCPT,
    # a temporary policy deferral, a 421, the client's reputation named
    "rate-words-rcpt": (
        "rcpt",
        450,
        "4.7.1",
        "4.7.1 <a@d.test>: Recipient address rejected: rate limit exceeded",
        C.RATE_LIMITED,
        None,
        None,
    ),
    "rate-words": (
        "mail",
        421,
        "4.7.0",
        "4.7.0 too many connections from your IP, slow down",
        C.RATE_LIMITED,
        SUSPEND,
        60,
    ),
    "policy-deferral-rcpt": (
        "rcpt",
        451,
        "4.7.1",
        "4.7.1 Service unavailable - try again later",
        C.RATE_LIMITED,
        None,
        None,
    ),
    "policy-deferral": (
        "mail",
        451,
        "4.7.500",
        f"4.7.500 Server busy. Please try again later from [{IP}]. (S77714)",
        C.RATE_LIMITED,
        SUSPEND,
        60,
    ),
    "flood-5.7.28": (
        "message",
        550,
        "5.7.28",
        "5.7.28 mail flood detected",
        C.RATE_LIMITED,
        None,
        None,
    ),
    "greeting-421": (
        "greeting",
        421,
        None,
        "mx.d.test Service not available, closing transmission channel",
        C.HOST_REFUSED,
        SUSPEND,
        60,
    ),
    "data-421": (
        "data",
        421,
        "4.3.2",
        "4.3.2 System not accepting network messages",
        C.TRANSIENT,
        SUSPEND,
        60,
    ),
    "client-reputation": (
        "mail",
        550,
        "5.7.1",
        "5.7.1 Client host rejected: poor reputation",
        C.REPUTATION,
        SUSPEND,
        60,
    ),
}


def decide(case: Case) -> tuple[BounceClass, ReplyAction | None]:
    stage, code, enhanced, text, *_ = case
    found = default_classifier().classify(code, enhanced, text, stage)
    return found.bounce_class, found.rule.action if found.rule else None


@pytest.mark.parametrize("case", list(ACTION_CASES.values()), ids=list(ACTION_CASES))
def test_each_reply_gets_its_class_and_action(case: Case) -> None:
    bounce_class, action = decide(case)
    got = (
        bounce_class,
        action.kind if action else None,
        action.duration_seconds if action else None,
    )
    assert got == case[4:]


def test_each_provider_rule_matches_only_its_providers_words() -> None:
    """A provider's rule decides its own replies and none of another provider's."""
    providers = {"gmail": "Gmail", "microsoft": "Microsoft", "yahoo": "Yahoo"}
    classifier = default_classifier()
    for name, case in ACTION_CASES.items():
        stage, code, enhanced, text, *_ = case
        rule = classifier.classify(code, enhanced, text, stage).rule
        assert rule is not None
        owner = next((p for p in providers if name.startswith(p)), None)
        for provider, word in providers.items():
            mine = (rule.description or "").startswith(word)
            if provider != owner:
                assert not mine, (name, rule.description)


def test_relay_made_replies_never_act() -> None:
    """What the relay made up (dns, local, lost, tls) names no receiver's wish;
    the rules give those stages no action (the relay ignores one anyway)."""
    for stage, code, text in [
        ("dns", 451, "4.4.3 DNS lookup failed: timeout"),
        ("lost", 421, "4.4.2 connection lost"),
        ("tls", 421, "4.7.5 STARTTLS required by policy"),
        ("local", 552, "5.3.4 message too big"),
    ]:
        found = default_classifier().classify(code, text.split()[0], text, stage)
        assert found.rule is not None and found.rule.action is None, (stage, found.rule)


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        ("{kind: pause, durationSeconds: 60}", "action.kind"),
        ("{kind: suspend}", "action.durationSeconds: Field required"),
        ("{kind: suspend, durationSeconds: 0}", "action.durationSeconds"),
        ("{kind: suspend, durationSeconds: 99999999}", "action.durationSeconds"),
        (
            "{kind: suspend, durationSeconds: 60, messagesPerMinute: 5}",
            "takes no messagesPerMinute",
        ),
        ("{kind: slow, durationSeconds: 60}", "a slow action needs messagesPerMinute"),
        ("{kind: slow, durationSeconds: 60, messagesPerMinute: 5, rateFactor: 1.5}", "rateFactor"),
        (
            "{kind: suspend, durationSeconds: 600, maxDurationSeconds: 60}",
            "at least durationSeconds",
        ),
        ("{kind: suspend, durationSeconds: 60, for: 1}", "for: Extra inputs are not permitted"),
    ],
)
def test_a_bad_action_is_refused_with_the_reason(action: str, problem: str) -> None:
    text = f"rules: [{{bounceClass: rate_limited, codes: [421], action: {action}}}]"
    with pytest.raises(BounceRulesError, match="^bounce_rules.yaml: rules.0.*" + problem):
        parse_rules(text)


def test_a_pool_rule_file_with_one_bad_rule_is_refused_whole() -> None:
    """Never half-applied: a good rule beside a bad pattern does not get through."""
    good = {"bounceClass": "rate_limited", "codes": ["421"], "text": "slow"}
    bad = {**good, "text": "(unclosed", "action": {"kind": "suspend", "durationSeconds": 60}}
    with pytest.raises(ValueError, match=r"(?s)rules\.1\.text.*not a regular expression"):
        BounceRules.model_validate({"rules": [good, bad]})
