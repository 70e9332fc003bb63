"""The pool's site actions as its status shows them (issue 21): one entry per
site and IP with its end and the reply that caused it, and a short SITES
column that names a few and counts the rest."""

from __future__ import annotations

from mailpipe.contracts.bounces import ActionKind
from mailpipe.contracts.site_actions import SiteAction
from mailpipe.operator.handlers.warmup import site_actions_status, site_actions_summary

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def action(site: str, kind: ActionKind = ActionKind.SUSPEND, **extra: object) -> SiteAction:
    return SiteAction.model_validate(
        {
            "site": site,
            "egress_ip": "203.0.113.5",
            "action": kind,
            "time": T0,
            "until": T0 + 1200,
            "reply": "421 4.7.28 rate limited",
            **extra,
        }
    )


def test_each_action_shows_its_site_ip_end_and_reply() -> None:
    slow = action("outlook.com", ActionKind.SLOW, messages_per_minute=10, relay="relay-a")
    assert site_actions_status([action("google.com"), slow]) == [
        {
            "site": "google.com",
            "ip": "203.0.113.5",
            "action": "suspended",
            "until": "2027-01-15T08:20:00Z",
            "after": "421 4.7.28 rate limited",
        },
        {
            "site": "outlook.com",
            "ip": "203.0.113.5",
            "action": "slowed",
            "until": "2027-01-15T08:20:00Z",
            "after": "421 4.7.28 rate limited",
            "messagesPerMinute": 10,
            "relay": "relay-a",
        },
    ]


def test_the_column_names_two_and_counts_the_rest() -> None:
    assert site_actions_summary([]) == ""
    assert site_actions_summary([action("google.com")]) == (
        "google.com suspended on 203.0.113.5 until 08:20Z"
    )
    many = [action(s) for s in ("a.test", "b.test", "c.test", "d.test")]
    assert site_actions_summary(many).endswith(", +2 more")
