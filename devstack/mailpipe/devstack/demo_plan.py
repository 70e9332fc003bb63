"""What the demo expects: who gets which answer, and the checks that must hold after.

Derived from the audience size alone, so every check is exact: the demo (and
the end-to-end test, with a smaller audience) compares the campaign's counts
and what the receivers saw against this plan. Kept apart from `demo`, which
runs the steps, so the expectations read on one page.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .smtp_receiver import SMTPReceiver

# Destination domain -> the loopback address its receiver (its MX) listens on.
DOMAINS = {
    "alpha.test": "127.0.0.21",
    "beta.test": "127.0.0.22",
    "gamma.test": "127.0.0.23",
    "delta.test": "127.0.0.24",
}
# The pool's egress IPs and HELO names, as examples/demo/pool.yaml declares them.
WARM_IP, WARM_HELO = "127.0.0.2", "warm.demo-sender.test"
WARMING_IP, WARMING_HELO = "127.0.0.3", "new.demo-sender.test"

# Recipient i goes to DOMAINS[i % 4]; the remainders below pick recipients of
# one domain each (20, 10 and 50 are multiples of 4), spread through the audience.
BOUNCE_EVERY, BOUNCE_AT = 20, 1  # beta.test: 550 5.1.1
DEFER_EVERY, DEFER_AT = 10, 2  # gamma.test: 450 greylisted first, then 250
SUPPRESS_EVERY, SUPPRESS_AT = 50, 3  # delta.test: unsubscribed before the campaign
WARMUP_CAP_DIVISOR = 10  # the warming IP may send a tenth of the audience on its first day

BOUNCE_REPLY = "550 5.1.1 no such user"
GREYLIST_REPLY = "450 4.2.0 greylisted, try again later"
OK_REPLY = "250 2.0.0 OK"


@dataclass
class Plan:
    """Who gets what answer: derived from the audience size, so checks are exact."""

    size: int
    recipients: list[str] = field(default_factory=list)
    bounce: set[str] = field(default_factory=set)  # 550 5.1.1
    defer: set[str] = field(default_factory=set)  # 451 first, then 250
    suppressed: set[str] = field(default_factory=set)  # on the suppression topic beforehand

    @classmethod
    def make(cls, size: int) -> Plan:
        plan = cls(size)
        domains = list(DOMAINS)
        for i in range(size):
            addr = f"user{i}@{domains[i % len(domains)]}"
            plan.recipients.append(addr)
            if addr.endswith("@beta.test") and i % BOUNCE_EVERY == BOUNCE_AT:
                plan.bounce.add(addr)
            if addr.endswith("@gamma.test") and i % DEFER_EVERY == DEFER_AT:
                plan.defer.add(addr)
            if addr.endswith("@delta.test") and i % SUPPRESS_EVERY == SUPPRESS_AT:
                plan.suppressed.add(addr)
        return plan

    @property
    def warmup_cap(self) -> int:
        return max(1, self.size // WARMUP_CAP_DIVISOR)

    def audience_csv(self) -> str:
        rows = [f"{a},User{a.split('@')[0][4:]}" for a in self.recipients]
        return "address,first\n" + "\n".join(rows) + "\n"

    def script(self, receivers: Mapping[str, SMTPReceiver]) -> None:
        """Tell the receivers how to answer the plan's bounced and greylisted recipients."""
        for addr in self.bounce:
            receivers["beta.test"].answer(addr, BOUNCE_REPLY)
        for addr in self.defer:
            receivers["gamma.test"].answer(addr, GREYLIST_REPLY, OK_REPLY)


Check = tuple[bool, str]


def summarize(
    plan: Plan,
    status: Mapping[str, Any],
    receivers: Mapping[str, SMTPReceiver],
    say: Callable[[str], None],
) -> list[Check]:
    """Print the run's numbers and return each check with whether it held."""
    counts = status["counts"]
    accepted: Counter[str] = Counter()
    per_ip: Counter[tuple[str, str]] = Counter()
    replies: dict[str, list[str]] = {}
    for domain, rx in receivers.items():
        for m in rx.messages():
            for r in m.rcpt_tos:
                accepted[r] += 1
                per_ip[(domain, m.peer)] += 1
        for rcpt, reply in rx.handler.rcpt_replies:
            replies.setdefault(rcpt, []).append(reply.split()[0])
    delivered_expected = set(plan.recipients) - plan.bounce - plan.suppressed
    duplicates = sum(n - 1 for n in accepted.values())

    say("\n== summary ==")
    say(f"campaign phase {status['phase']}, counts {json.dumps(counts)}")
    say("delivered per domain and egress IP (as the receivers saw them):")
    for (domain, ip), n in sorted(per_ip.items()):
        say(f"  {domain:<12} {ip:<10} {n}")
    greylisted_then_ok = [GREYLIST_REPLY.split()[0], OK_REPLY.split()[0]]
    deferred_then_delivered = {
        a for a in plan.defer if replies.get(a, [])[:2] == greylisted_then_ok
    }
    say(
        f"bounced {counts['bounced']}, deferred-then-delivered {len(deferred_then_delivered)}, "
        f"suppressed {counts['suppressed']}, duplicates {duplicates}"
    )

    cold = sum(n for (_, ip), n in per_ip.items() if ip == WARMING_IP)
    # The cap, and the WARMUP column's "tried", count every recipient the IP
    # tried: delivered, bounced and deferred alike.
    cold_tried = sum(rx.handler.rcpt_tries[WARMING_IP] for rx in receivers.values())
    helos = {m.peer: m.helo for rx in receivers.values() for m in rx.messages()}
    return [
        (status["phase"] == "Completed", "campaign Completed"),
        (counts["total"] == plan.size, f"total {counts['total']} == audience {plan.size}"),
        (
            counts["delivered"] == len(delivered_expected),
            f"delivered {counts['delivered']} == {len(delivered_expected)}",
        ),
        (
            counts["bounced"] == len(plan.bounce),
            f"bounced {counts['bounced']} == {len(plan.bounce)}",
        ),
        (
            counts["suppressed"] == len(plan.suppressed),
            f"suppressed {counts['suppressed']} == {len(plan.suppressed)}",
        ),
        (counts["deferred"] == 0 and counts["expired"] == 0, "nothing left deferred or expired"),
        (
            set(accepted) == delivered_expected,
            "receivers accepted exactly the deliverable recipients",
        ),
        (
            deferred_then_delivered == plan.defer,
            f"all {len(plan.defer)} greylisted recipients delivered on retry",
        ),
        (
            not any(a in replies for a in plan.suppressed),
            "no suppressed address was ever sent to",
        ),
        (
            0 < cold <= cold_tried <= plan.warmup_cap,
            f"warming IP {WARMING_IP} tried {cold_tried} recipients ({cold} delivered)"
            f" <= cap {plan.warmup_cap}",
        ),
        (
            helos.get(WARMING_IP) == WARMING_HELO and helos.get(WARM_IP) == WARM_HELO,
            "each IP greets with its own HELO name",
        ),
    ]
