"""What the demo expects: who gets which answer, what comes back, and the checks after.

Derived from the audience size alone, so every check is exact: the demo (and
the end-to-end test, with a smaller audience) compares the campaign's counts,
what the receiver saw and what came back against this plan. Kept apart from
`demo`, which runs the steps, so the expectations read on one page; pure (no
IO, no clock), so `tests/devstack/test_demo_plan.py` checks each piece. The
pods are judged here too (`pods_check`: the operator's and the pool's Running
on the node with the image built here), from what `kubectl get pods -A` says.

What comes back is written as mail systems write it: an asynchronous bounce as
the recipient's MX writes an RFC 3464 report, a complaint as a mailbox
provider's feedback loop writes an RFC 5965 (ARF) report, an out-of-office
reply as a vacation responder writes one (RFC 3834), each about the copy the
recipient's mailbox holds (`mailbox_copy`).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from .dns import Zone
from .smtp_receiver import Received, ReceiverHandler, SMTPReceiver

# The recipients' domains. Their MX hosts are one recording receiver (one mail
# system hosting four domains, as mailbox providers do), reached by the relay
# pods at the address `zones` gives their MX names.
DOMAINS = ("alpha.test", "beta.test", "gamma.test", "delta.test")
# The pool's HELO names, as examples/demo/pool.yaml declares them beside its
# egress IPs (the node's egress addresses, `Egress`).
WARM_HELO, WARMING_HELO = "warm.demo-sender.test", "new.demo-sender.test"
# What comes back, as examples/demo/pool.yaml's spec.feedback and spec.unsubscribe say:
# the bounce domain's MX is the pool's feedback receiver; the one-click URLs
# start with the base URL, which an https ingress routes to the endpoint.
BOUNCE_DOMAIN = "bounces.demo-sender.test"
FEEDBACK_MX = f"mx.{BOUNCE_DOMAIN}"
FBL_ADDRESS = f"fbl@{BOUNCE_DOMAIN}"  # spec.feedback.fblLocalPart's default, "fbl"
UNSUBSCRIBE_BASE_URL = "https://unsubscribe.demo-sender.test/u/"

# Recipient i goes to DOMAINS[i % 4]; the remainders below pick recipients of
# one domain each (20, 10, 50 and 100 are multiples of 4), spread through the audience.
BOUNCE_EVERY, BOUNCE_AT = 20, 1  # beta.test: 550 5.1.1 at RCPT
DEFER_EVERY, DEFER_AT = 10, 2  # gamma.test: 450 greylisted first, then 250
SUPPRESS_EVERY, SUPPRESS_AT = 50, 3  # delta.test: unsubscribed before the campaign
ASYNC_BOUNCE_EVERY, ASYNC_BOUNCE_AT = 100, 8  # alpha.test: accepted, then a DSN
# One alpha.test recipient each (none of them i % 100 == 8): complains,
# unsubscribes by one-click, and is away (an out-of-office reply).
COMPLAIN_AT, UNSUBSCRIBE_AT, AWAY_AT = 4, 12, 16
MIN_RECIPIENTS = AWAY_AT + 1  # every part of the loop has its recipient
WARMUP_CAP_DIVISOR = 10  # the warming IP may send a tenth of the audience on its first day

BOUNCE_REPLY = "550 5.1.1 no such user"
GREYLIST_REPLY = "450 4.2.0 greylisted, try again later"
OK_REPLY = "250 2.0.0 OK"
# An asynchronous bounce: the MX took the message, then found the mailbox
# disabled (Gmail's wording), a class of its own beside the 5.1.1s at RCPT.
ASYNC_STATUS = "5.2.1"
ASYNC_DIAGNOSTIC = "550 5.2.1 The email account that you tried to reach is disabled"
SYNC_BOUNCE_CLASS, ASYNC_BOUNCE_CLASS = "invalid_recipient", "inactive_mailbox"
ONE_CLICK_BODY = b"List-Unsubscribe=One-Click"  # RFC 8058 3.1
FOLLOW_UP = "demo-followup"  # the campaign sent to the loop's recipients afterwards
CRLF = "\r\n"

Check = tuple[bool, str]  # whether it held, and what it says


@dataclass
class Plan:
    """Who gets what answer: derived from the audience size, so checks are exact."""

    size: int
    recipients: list[str] = field(default_factory=list)
    bounce: set[str] = field(default_factory=set)  # 550 5.1.1
    defer: set[str] = field(default_factory=set)  # 451 first, then 250
    suppressed: set[str] = field(default_factory=set)  # on the suppression topic beforehand
    async_bounce: set[str] = field(default_factory=set)  # delivered, then a DSN comes back
    complainer: str = ""  # delivered, then an ARF complaint comes back
    unsubscriber: str = ""  # delivered, then POSTs the message's one-click URL
    away: str = ""  # delivered, then an out-of-office reply comes back

    @classmethod
    def make(cls, size: int) -> Plan:
        if size < MIN_RECIPIENTS:
            raise ValueError(
                f"the demo needs at least {MIN_RECIPIENTS} recipients (one each to bounce,"
                f" complain, unsubscribe and be away), not {size}"
            )
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
            if addr.endswith("@alpha.test") and i % ASYNC_BOUNCE_EVERY == ASYNC_BOUNCE_AT:
                plan.async_bounce.add(addr)
        plan.complainer = plan.recipients[COMPLAIN_AT]
        plan.unsubscriber = plan.recipients[UNSUBSCRIBE_AT]
        plan.away = plan.recipients[AWAY_AT]
        return plan

    @property
    def warmup_cap(self) -> int:
        return max(1, self.size // WARMUP_CAP_DIVISOR)

    @property
    def deliverable(self) -> set[str]:
        """Who the receivers accept a message for."""
        return set(self.recipients) - self.bounce - self.suppressed

    @property
    def came_back(self) -> set[str]:
        """Who gets suppressed by what comes back (not the one who is away)."""
        return self.async_bounce | {self.complainer, self.unsubscriber}

    def audience_csv(self) -> str:
        rows = [f"{a},User{a.split('@')[0][4:]}" for a in self.recipients]
        return "address,first\n" + "\n".join(rows) + "\n"

    def script(self, receiver: SMTPReceiver) -> None:
        """Tell the receiver how to answer the plan's bounced and greylisted recipients."""
        for addr in self.bounce:
            receiver.answer(addr, BOUNCE_REPLY)
        for addr in self.defer:
            receiver.answer(addr, GREYLIST_REPLY, OK_REPLY)

    def follow_up(self, namespace: str, pool: str) -> dict[str, Any]:
        """A second campaign to everyone the loop touched: the suppressed are left
        out before sending; the one who was only away gets it."""
        audience = sorted(self.came_back | {self.away})
        return {
            "apiVersion": "mailpipe.io/v1alpha1",
            "kind": "Campaign",
            "metadata": {"name": FOLLOW_UP, "namespace": namespace},
            "spec": {
                "poolRef": pool,
                "from": {"address": "news@demo-sender.test", "name": "Demo News"},
                "subject": "A follow-up",
                "text": "Hi, one more thing.\n",
                "audience": {"inline": [{"address": a} for a in audience]},
            },
        }


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


@dataclass(frozen=True)
class Egress:
    """The pool's two egress IPs: the node's first two egress addresses (the
    node holds them and advertises them in its labels), one warm, one warming up."""

    warm: str
    warming: str

    @classmethod
    def of(cls, node_addresses: Sequence[str]) -> Egress:
        if len(node_addresses) < 2:
            raise ValueError(
                f"the demo's pool needs two egress IPs, the node holds {list(node_addresses)}"
            )
        return cls(node_addresses[0], node_addresses[1])

    @property
    def helos(self) -> dict[str, str]:
        return {self.warm: WARM_HELO, self.warming: WARMING_HELO}


def zones(recipients_mx: str, feedback_mx: str) -> list[Zone]:
    """The demo's DNS: every recipient domain's MX at `recipients_mx` (where the
    node reaches the recording receiver), the bounce domain's MX at
    `feedback_mx` (where the host reaches the pool's feedback receiver)."""
    out = [Zone(d, mx=((f"mx.{d}", 10),), a={f"mx.{d}": recipients_mx}) for d in DOMAINS]
    out.append(Zone(BOUNCE_DOMAIN, mx=((FEEDBACK_MX, 10),), a={FEEDBACK_MX: feedback_mx}))
    return out


# -- the pods ----------------------------------------------------------------------------

# The build script's last line names what it built or found: "image: <ref> ... (<archive>)".
_BUILT_LINE = re.compile(r"^image: (?P<ref>\S+) .*\((?P<archive>/\S+\.oci\.tar)\)$", re.MULTILINE)


def built_image(output: str) -> tuple[str, Path]:
    """The image reference and archive `scripts/build-image.sh` says it built or found."""
    found = list(_BUILT_LINE.finditer(output))
    if not found:
        raise ValueError(
            "scripts/build-image.sh named no image (no `image: <ref> ... (<archive>)`)"
        )
    return found[-1]["ref"], Path(found[-1]["archive"])


def node_port_service(
    name: str, namespace: str, pool: str, component: str, port_name: str
) -> dict[str, Any]:
    """What a platform team puts in front of an endpoint the operator serves
    behind a ClusterIP Service (how the world reaches it is the cluster's): a
    NodePort Service on the same pods and container port, so the world reaches
    them at the node's address."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "mailpipe-demo"},
        },
        "spec": {
            "type": "NodePort",
            "selector": {"mailpipe.io/pool": pool, "app.kubernetes.io/component": component},
            "ports": [{"name": port_name, "port": NODE_PORT_SERVICE_PORT, "targetPort": port_name}],
        },
    }


NODE_PORT_SERVICE_PORT = 80  # its ClusterIP port, unused: the world comes in at the node port


def node_port(service: Mapping[str, Any]) -> int:
    """The node port the API server gave a NodePort Service (0 before it did)."""
    ports = service.get("spec", {}).get("ports") or [{}]
    return int(ports[0].get("nodePort") or 0)


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return bool(statuses) and all(c.get("ready") for c in statuses)


def pods_check(
    pods: Sequence[Mapping[str, Any]],
    image: str,
    image_names: Collection[str],
    roles: Mapping[str, tuple[str, str]],
) -> list[Check]:
    """For each role (what -> (namespace, pod name prefix)): its pods are Running
    and ready on a node, their containers name `image`, and the kubelet reports
    them running an image the node holds under one of `image_names` (the
    imported archive's names: its content tag and its version tag)."""
    checks: list[Check] = []
    for what, (namespace, prefix) in roles.items():
        mine = [
            p
            for p in pods
            if p["metadata"]["namespace"] == namespace
            and p["metadata"]["name"].startswith(prefix)
            and not p["metadata"].get("deletionTimestamp")
        ]
        good = [
            p
            for p in mine
            if p.get("status", {}).get("phase") == "Running"
            and _pod_ready(p)
            and p.get("spec", {}).get("nodeName")
            and all(c.get("image") == image for c in p["spec"]["containers"])
            and all(
                c.get("image") in image_names
                for c in p.get("status", {}).get("containerStatuses") or []
            )
        ]
        nodes = sorted({str(p["spec"]["nodeName"]) for p in good})
        checks.append(
            (
                bool(mine) and len(good) == len(mine),
                f"{what}: {len(good)} of {len(mine)} pod(s) Running and ready on"
                f" {', '.join(nodes) or 'no node'} with image {image}",
            )
        )
    return checks


def timings(measured: Mapping[str, float]) -> list[str]:
    """The measured steps, one line each, in the order they ran."""
    width = max((len(what) for what in measured), default=0)
    return [f"  {what:<{width}}  {seconds:6.1f} s" for what, seconds in measured.items()]


# -- what comes back, as mail systems write it -------------------------------------------


def mailbox_copy(message: Received) -> bytes:
    """The message as the recipient's mailbox holds it: with the Return-Path the
    final MTA adds from the envelope sender (RFC 5321 4.4)."""
    return f"Return-Path: <{message.mail_from}>{CRLF}".encode() + message.data


def _parsed(copy: bytes) -> email.message.Message:
    return email.message_from_bytes(copy, policy=email.policy.default)


def return_path(copy: bytes) -> str:
    """Where replies and reports about `copy` go: its Return-Path (VERP: the
    pool's bounce domain)."""
    value = str(_parsed(copy).get("Return-Path", "")).strip().strip("<>")
    if "@" not in value:
        raise ValueError(f"the message has no Return-Path address ({value!r})")
    return value


def _headers(copy: bytes) -> str:
    head, _, _ = copy.partition(b"\r\n\r\n")
    return head.decode("utf-8", errors="replace") + CRLF


def _crlf(text: str) -> bytes:
    return re.sub(r"\r?\n", CRLF, text).encode("utf-8")


def _message_id(kind: str, copy: bytes, host: str) -> str:
    """Deterministic (pure): the same report for the same copy has the same id."""
    return f"<{kind}.{hashlib.sha256(copy).hexdigest()[:16]}@{host}>"


def dsn(copy: bytes, recipient: str, when: datetime) -> bytes:
    """The delivery report the recipient's MX sends when it took `copy` and then
    could not deliver it: multipart/report with a message/delivery-status part
    (RFC 3464, as Postfix writes it) and the original's headers."""
    mta = "mx." + recipient.rpartition("@")[2]
    date = format_datetime(when)
    boundary = f"dsn-{hashlib.sha256(copy).hexdigest()[:12]}"
    text = f"""\
From: Mail Delivery System <MAILER-DAEMON@{mta}>
To: {return_path(copy)}
Subject: Undelivered Mail Returned to Sender
Date: {date}
Message-ID: {_message_id("dsn", copy, mta)}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

This is the mail system at host {mta}.

Your message to <{recipient}> was accepted, but could not be delivered:
{ASYNC_DIAGNOSTIC}

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; {mta}
Arrival-Date: {date}

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822; {recipient}
Action: failed
Status: {ASYNC_STATUS}
Diagnostic-Code: smtp; {ASYNC_DIAGNOSTIC}

--{boundary}
Content-Type: text/rfc822-headers

{_headers(copy)}
--{boundary}--
"""
    return _crlf(text)


def arf(copy: bytes, recipient: str, source_ip: str, when: datetime) -> bytes:
    """The complaint a mailbox provider's feedback loop sends when `recipient`
    marks `copy` as spam: multipart/report with a message/feedback-report part
    (RFC 5965, feedback-type abuse) and the whole original, to the pool's
    feedback loop address."""
    provider = "fbl." + recipient.rpartition("@")[2]
    date = format_datetime(when)
    boundary = f"arf-{hashlib.sha256(copy).hexdigest()[:12]}"
    head = f"""\
From: Feedback Loop <complaints@{provider}>
To: {FBL_ADDRESS}
Subject: Complaint about a message from demo-sender.test
Date: {date}
Message-ID: {_message_id("arf", copy, provider)}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

This is an email abuse report for a message received from IP {source_ip} on {date}.

--{boundary}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: demo-feedback-loop/1.0
Version: 1
Original-Mail-From: <{return_path(copy)}>
Original-Rcpt-To: <{recipient}>
Source-IP: {source_ip}
Arrival-Date: {date}

--{boundary}
Content-Type: message/rfc822
Content-Disposition: inline

"""
    return _crlf(head) + copy + _crlf(f"\n--{boundary}--\n")


def out_of_office(copy: bytes, recipient: str, when: datetime) -> bytes:
    """A vacation responder's reply to `copy`, sent to its Return-Path as
    responders do, marked as RFC 3834 says."""
    original = _parsed(copy)
    text = f"""\
From: {recipient}
To: {return_path(copy)}
Subject: Automatic reply: {original.get("Subject", "")}
Date: {format_datetime(when)}
Message-ID: {_message_id("away", copy, recipient.rpartition("@")[2])}
In-Reply-To: {original.get("Message-ID", "")}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

I am out of the office this week and will read your message when I am back.
"""
    return _crlf(text)


def one_click_url(copy: bytes) -> str:
    """The https URL of `copy`'s List-Unsubscribe that RFC 8058 lets a mail client
    POST to: only when List-Unsubscribe-Post offers one-click."""
    msg = _parsed(copy)
    offered = re.sub(r"\s+", "", str(msg.get("List-Unsubscribe-Post", "")))
    if offered != ONE_CLICK_BODY.decode():
        raise ValueError(f"the message offers no one-click unsubscribe ({offered!r})")
    targets = re.findall(r"<([^>]*)>", str(msg.get("List-Unsubscribe", "")))
    urls = [re.sub(r"\s+", "", t) for t in targets if t.strip().startswith("https://")]
    if not urls:
        raise ValueError("the message's List-Unsubscribe has no https URL")
    return urls[0]


def dkim_signed_headers(copy: bytes) -> list[str]:
    """The header names (lower case) the DKIM signature of `copy` covers (its h= tag)."""
    signature = re.sub(r"\s+", "", str(_parsed(copy).get("DKIM-Signature", "")))
    tags = dict(t.split("=", 1) for t in signature.split(";") if "=" in t)
    return [h.lower() for h in tags.get("h", "").split(":") if h]


def behind_ingress(url: str, base_url: str, local_base: str) -> str:
    """Where the https ingress in front of the endpoint sends `url`: the same
    path on the endpoint's plain HTTP address."""
    if not url.startswith(base_url):
        raise ValueError(f"{url} is not under the pool's unsubscribe base URL {base_url}")
    return local_base + url[len(base_url) :]


# -- the summary ---------------------------------------------------------------------------


def summarize(
    plan: Plan,
    status: Mapping[str, Any],
    receiver: ReceiverHandler,
    egress: Egress,
    say: Callable[[str], None],
) -> list[Check]:
    """Print the send's numbers and return each check with whether it held
    (`receiver`: the recording receiver's records)."""
    counts = status["counts"]
    accepted: Counter[str] = Counter()
    per_ip: Counter[tuple[str, str]] = Counter()
    replies: dict[str, list[str]] = {}
    with receiver.lock:
        messages = list(receiver.messages)
        rcpt_replies = list(receiver.rcpt_replies)
        cold_tried = receiver.rcpt_tries[egress.warming]
    for m in messages:
        for r in m.rcpt_tos:
            accepted[r] += 1
            per_ip[(domain_of(r), m.peer)] += 1
    for rcpt, reply in rcpt_replies:
        replies.setdefault(rcpt, []).append(reply.split()[0])
    delivered_expected = plan.deliverable
    duplicates = sum(n - 1 for n in accepted.values())

    say("\n== the send ==")
    say(f"campaign phase {status['phase']}, counts {json.dumps(counts)}")
    say("delivered per domain and egress IP (as the receiver saw them):")
    for (domain, ip), n in sorted(per_ip.items()):
        say(f"  {domain:<12} {ip:<15} {n}")
    greylisted_then_ok = [GREYLIST_REPLY.split()[0], OK_REPLY.split()[0]]
    deferred_then_delivered = {
        a for a in plan.defer if replies.get(a, [])[:2] == greylisted_then_ok
    }
    say(
        f"bounced {counts['bounced']}, deferred-then-delivered {len(deferred_then_delivered)}, "
        f"suppressed {counts['suppressed']}, duplicates {duplicates}"
    )

    cold = sum(n for (_, ip), n in per_ip.items() if ip == egress.warming)
    # The cap, and the WARMUP column's "tried", count every recipient the IP
    # tried (`cold_tried`): delivered, bounced and deferred alike.
    helos = {m.peer: m.helo for m in messages}
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
            "the receiver accepted exactly the deliverable recipients",
        ),
        (
            {ip for _, ip in per_ip} <= {egress.warm, egress.warming},
            f"every message came from the pool's egress IPs {egress.warm}, {egress.warming}",
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
            f"warming IP {egress.warming} tried {cold_tried} recipients ({cold} delivered)"
            f" <= cap {plan.warmup_cap}",
        ),
        (
            all(helos.get(ip) == helo for ip, helo in egress.helos.items()),
            "each IP greets with its own HELO name",
        ),
    ]


@dataclass
class CameBack:
    """What the loop's steps saw: the answers the feedback receiver and the
    endpoint gave, and the state after (all read by the demo, judged here)."""

    answers: dict[str, int]  # what was sent -> SMTP reply code or HTTP status
    status: Mapping[str, Any]  # the campaign's, once it counted what came back
    suppressions: Sequence[Mapping[str, Any]]  # `kubectl mailpipe suppressions list -o json`
    follow_up: Mapping[str, Any]  # the follow-up campaign's status, Completed
    follow_up_sent_to: Sequence[str]  # who the receivers got the follow-up for
    one_click_signed: Sequence[str] = ()  # what DKIM covers in the unsubscriber's message


def summarize_loop(plan: Plan, back: CameBack, say: Callable[[str], None]) -> list[Check]:
    """Print what came back and return each check with whether it held."""
    counts = back.status["counts"]
    by_class = dict(back.status.get("bouncedByClass") or {})
    variants = dict(back.status.get("variants") or {})
    reasons = {str(s["address"]).lower(): str(s["reason"]) for s in back.suppressions}
    sources = {str(s["address"]).lower(): str(s.get("source") or "") for s in back.suppressions}
    follow = back.follow_up
    follow_counts = follow.get("counts") or {}
    async_n = len(plan.async_bounce)

    say("\n== what came back ==")
    answered = Counter((what.split()[0], code) for what, code in back.answers.items())
    say("answers: " + ", ".join(f"{what} {code} x{n}" for (what, code), n in answered.items()))
    say(
        f"campaign counts: bounced {counts['bounced']} {json.dumps(by_class)}, complained"
        f" {counts['complained']}, unsubscribed {counts['unsubscribed']}, complaint rate"
        f" {(back.status.get('complaints') or {}).get('rate', '?')}"
    )
    for name, per in sorted(variants.items()):
        say(
            f"  variant {name}: delivered {per.get('delivered')}, bounced {per.get('bounced')},"
            f" complained {per.get('complained')}, unsubscribed {per.get('unsubscribed')}"
        )
    say(
        f"follow-up {FOLLOW_UP}: {follow.get('phase')}, suppressed before send"
        f" {(follow.get('fanout') or {}).get('suppressedBeforeSend')}, sent to"
        f" {', '.join(back.follow_up_sent_to) or 'nobody'}"
    )
    expected_reasons = {
        **dict.fromkeys(plan.async_bounce, "hard_bounce"),
        plan.complainer: "complaint",
        plan.unsubscriber: "unsubscribe",
    }
    wrong = {a: reasons.get(a) for a, r in expected_reasons.items() if reasons.get(a) != r}

    def variant_sum(key: str) -> int:
        return sum(int(per.get(key) or 0) for per in variants.values())

    return [
        (
            bool(back.answers) and all(code in (200, 250) for code in back.answers.values()),
            "the feedback receiver took every report (250) and the endpoint the POST (200)",
        ),
        (
            counts["bounced"] == len(plan.bounce) + async_n
            and by_class == {SYNC_BOUNCE_CLASS: len(plan.bounce), ASYNC_BOUNCE_CLASS: async_n},
            f"bounced {counts['bounced']} == {len(plan.bounce)} {SYNC_BOUNCE_CLASS} at RCPT"
            f" + {async_n} {ASYNC_BOUNCE_CLASS} by DSN",
        ),
        (counts["complained"] == 1, f"complained {counts['complained']} == 1 (ARF report)"),
        (
            counts["unsubscribed"] == 1,
            f"unsubscribed {counts['unsubscribed']} == 1 (one-click POST)",
        ),
        (
            counts["delivered"] == len(plan.deliverable) - async_n,
            f"delivered {counts['delivered']} == {len(plan.deliverable)} - {async_n} bounced"
            " later (the out-of-office reply changed nothing)",
        ),
        (
            (variant_sum("bounced"), variant_sum("complained"), variant_sum("unsubscribed"))
            == (counts["bounced"], counts["complained"], counts["unsubscribed"]),
            f"each A/B variant counted ({', '.join(sorted(variants)) or 'none'})",
        ),
        (
            not wrong,
            f"suppressed: {async_n} hard_bounce, 1 complaint, 1 unsubscribe"
            + (f" (wrong: {wrong})" if wrong else ""),
        ),
        (
            {"list-unsubscribe", "list-unsubscribe-post"} <= set(back.one_click_signed),
            "DKIM covers List-Unsubscribe and List-Unsubscribe-Post (RFC 8058)",
        ),
        (
            plan.away.lower() not in reasons,
            f"the out-of-office recipient is not suppressed ({reasons.get(plan.away.lower(), '')})",
        ),
        (
            sources.get(plan.unsubscriber.lower(), "").startswith("unsubscribe:")
            and all(":" in sources.get(a, "") for a in plan.async_bounce | {plan.complainer}),
            "each suppression names its source (the feedback receiver, the one-click endpoint)",
        ),
        (
            back.status.get("phase") == "Completed",
            f"campaign still Completed (complaint rate under its pause threshold):"
            f" {back.status.get('phase')}",
        ),
        (
            follow.get("phase") == "Completed"
            and (follow.get("fanout") or {}).get("suppressedBeforeSend") == len(plan.came_back)
            and follow_counts.get("delivered") == 1
            and list(back.follow_up_sent_to) == [plan.away],
            f"follow-up skipped the {len(plan.came_back)} suppressed and reached only {plan.away}",
        ),
    ]
