"""`kubectl mailpipe fate` and `suppressions list` on what comes back (issue 20, item 7).

Before: `fate` read one pool's events and one suppression topic, and counted
everything on the events topic as the relay's attempts: an asynchronous bounce
or an unsubscribe days later became "unsubscribed after 3 attempt(s)", with no
word of who said so, its bounce class, or where the suppression holds (the
namespace, one list, the never-mail list); `suppressions list` could not
filter by source, and an unknown `--reason` got argparse's usage dump.

The events and suppressions here are the real writers' own: the feedback
receiver's decision on real DSN and ARF samples (`Receiver.decide`), the
one-click endpoint's `event_of` / `suppression_of`, the relay's `Event`.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml
from kafka import KafkaProducer

from mailpipe.cli.kubectl.records import (
    FEEDBACK_RECEIVER,
    MAILTO,
    ONE_CLICK,
    RELAY_ATTEMPT,
    SOURCE,
    UsageError,
    checked_reason,
    fate_row,
    fates,
    held,
    held_row,
    live_suppressions,
    scopes,
    selected,
    source_kind,
)
from mailpipe.contracts.bounces import default_classifier
from mailpipe.contracts.feedback_token import (
    Purpose,
    TokenKeys,
    TokenPayload,
    return_path,
    sign,
)
from mailpipe.contracts.topics import NEVER_MAIL_TOPIC, Topics
from mailpipe.contracts.wire import (
    Disposition,
    Event,
    Suppression,
    SuppressionReason,
    encode,
    suppression_key,
)
from mailpipe.devstack import harness
from mailpipe.inbound import unsubscribe
from mailpipe.inbound.feedback import Outcome, Receiver
from mailpipe.kafkakit import ensure_topics
from tests.inbound import samples as S
from tests.operator.integration.conftest import pool_manifest

from .conftest import one_line_error, plugin

T0 = 1_800_000_000.0
KEYS = TokenKeys({"ka": b"k" * 32}, "ka")
DOMAIN = "bounce.sender.test"


def _payload(ns: str, pool: str, rcpt: str, campaign: str, **kw: str) -> TokenPayload:
    return TokenPayload(
        namespace=ns,
        pool=pool,
        recipient=rcpt,
        message_id=f"{campaign}-000017",
        campaign=campaign,
        issued_at=int(T0),
        **kw,  # type: ignore[arg-type]
    )


def _receiver(p: TokenPayload) -> Receiver:
    return Receiver(
        namespace=p.namespace,
        pool=p.pool,
        bounce_domain=DOMAIN,
        keys=KEYS,
        classifier=default_classifier(),
        validity_seconds=60 * 86400,
        receiver_id="feedback-node1",
    )


def _returned(template: str, p: TokenPayload, now: float, mail_from: str = "") -> Outcome:
    """What the feedback receiver writes for `template` (a real report) about `p`."""
    rx = _receiver(p)
    data = S.fill(
        template,
        rp=return_path(sign(p, Purpose.BOUNCE, KEYS), DOMAIN),
        rcpt=p.recipient,
        trace=sign(p, Purpose.TRACE, KEYS),
        fbl=f"fbl@{DOMAIN}",
    )
    out = rx.decide(data, p, mail_from, now)
    assert out.events, out
    return out


def _attempt(
    ns: str, campaign: str, rcpt: str, disposition: Disposition, t: float, attempt: int, code: int
) -> Event:
    """An event as the relay writes it after an SMTP attempt (relay.settlement.event)."""
    return Event(
        message_id=f"{campaign}-000017",
        campaign=f"{ns}/{campaign}",
        recipient=rcpt,
        domain=rcpt.rpartition("@")[2],
        disposition=disposition,
        time=t,
        attempt=attempt,
        egress_ip="192.0.2.21",
        smtp_code=code,
        enhanced_code=f"{code // 100}.0.0",
        reply="queued as 4F2A" if code < 300 else "greylisted",
        reason=None if code < 300 else "greylisted",
        relay="mailpipe-relay-news-7d9f",
    )


def _story(ns: str, rcpt: str) -> tuple[list[Event], dict[str, list[tuple[bytes, bytes | None]]]]:
    """One recipient across two campaigns of two pools: spring (pool news) was
    greylisted, delivered, then bounced asynchronously and complained about;
    autumn (pool promo) was delivered and unsubscribed from one list by one-click.
    Returns the events and each suppression topic's records."""
    spring, autumn = (
        _payload(ns, "news", rcpt, "spring"),
        _payload(ns, "promo", rcpt, "autumn", mailing_list="weekly"),
    )
    bounce = _returned(S.POSTFIX_DSN, spring, T0 + 3600)
    complaint = _returned(S.YAHOO_ARF, spring, T0 + 7200, mail_from="feedback@yahoo.test")
    _, unsub_event = unsubscribe.event_of(autumn, T0 + 9000)
    unsub_key, unsub_value = unsubscribe.suppression_of(autumn, T0 + 9000)
    events = [
        _attempt(ns, "spring", rcpt, Disposition.DEFERRED, T0, 1, 451),
        _attempt(ns, "spring", rcpt, Disposition.DELIVERED, T0 + 600, 2, 250),
        *bounce.events,
        *complaint.events,
        _attempt(ns, "autumn", rcpt, Disposition.DELIVERED, T0 + 8000, 1, 250),
        Event.model_validate_json(unsub_event),
    ]
    shared = f"mailpipe.{ns}.suppressions"
    [bounced] = bounce.suppressions
    [complained] = complaint.suppressions
    by_topic: dict[str, list[tuple[bytes, bytes | None]]] = {
        shared: [
            (suppression_key(rcpt).encode(), encode(bounced)),
            (suppression_key(rcpt).encode(), encode(complained)),  # compaction: the last wins
            (unsub_key, unsub_value),
        ],
        NEVER_MAIL_TOPIC: [
            (
                suppression_key(rcpt).encode(),
                encode(
                    Suppression(
                        address=rcpt,
                        reason=SuppressionReason.MANUAL,
                        time=T0,
                        source="platform-team",
                        detail="litigator",
                    )
                ),
            )
        ],
    }
    return events, by_topic


def test_a_fate_tells_the_relays_attempts_from_what_came_back() -> None:
    events, _ = _story("mail", "ann@example.test")
    spring, autumn = fates(events, "Ann@Example.test")
    assert [fate_row(e)[2] for e in spring.events] == [
        RELAY_ATTEMPT,
        RELAY_ATTEMPT,
        FEEDBACK_RECEIVER,
        FEEDBACK_RECEIVER,
    ]
    assert [e.disposition for e in spring.returned] == [
        Disposition.BOUNCED,
        Disposition.COMPLAINED,
    ]
    # The relay's last word stays the delivery; what came back follows it.
    assert spring.last.disposition is Disposition.DELIVERED and spring.final
    assert spring.summary() == (
        "delivered at 2027-01-15T08:10:00Z after 2 attempt(s): 250 2.0.0 queued as 4F2A"
        "; then bounced (invalid_recipient) at 2027-01-15T09:00:00Z via feedback receiver"
        "; then complained at 2027-01-15T10:00:00Z via feedback receiver"
    )
    bounce_row = fate_row(spring.returned[0])
    assert bounce_row[3:6] == ["bounced", "invalid_recipient", "-"]  # no attempt number
    assert bounce_row[7].startswith("550 5.1.1 <ann@example.test>: Recipient address rejected")
    assert [fate_row(e)[2] for e in autumn.events] == [RELAY_ATTEMPT, ONE_CLICK]
    assert autumn.summary().endswith("then unsubscribed at 2027-01-15T10:30:00Z via one-click")
    # A message whose attempts have left the events topic: what came back is still told.
    [late] = fates(spring.returned, "ann@example.test")
    assert late.summary().startswith("no attempt on the events topic")


def test_an_unsubscribe_by_mail_is_told_from_one_click_and_from_the_relays_words() -> None:
    rcpt = "ann@example.test"
    p = _payload("mail", "promo", rcpt, "autumn", mailing_list="weekly")
    by_mail = _receiver(p).decide_unsubscribe(
        b"From: " + rcpt.encode() + b"\r\nSubject: unsubscribe\r\n\r\nplease\r\n",
        p,
        rcpt,
        T0 + 9000,
    )
    _, by_click = unsubscribe.event_of(p, T0 + 9500)
    # The relay skipping a later record for a complaint suppression: its reason is
    # the suppression's ("complaint"), no feedback writer's word.
    skipped = _attempt("mail", "autumn", rcpt, Disposition.SUPPRESSED, T0 + 9900, 0, 250)
    skipped = skipped.model_copy(update={"reason": "complaint", "smtp_code": None})
    events = [
        _attempt("mail", "autumn", rcpt, Disposition.DELIVERED, T0 + 8000, 1, 250),
        *by_mail.events,
        Event.model_validate_json(by_click),
        skipped,
    ]
    (fate,) = fates(events, rcpt)
    assert [fate_row(e)[2] for e in fate.events] == [
        RELAY_ATTEMPT,
        MAILTO,
        ONE_CLICK,
        RELAY_ATTEMPT,
    ]
    assert " via mailto; " in fate.summary()
    (sup,) = by_mail.suppressions
    entry = live_suppressions([(b"k", encode(sup))])["k"]
    held_here = held(rcpt, {"t": [(b"k", encode(sup))]}, {"t": "namespace mail"})
    assert (source_kind(entry.source), held_row(held_here[0])[4]) == ("unsubscribe", MAILTO)


def test_the_suppressions_that_hold_say_why_who_and_where() -> None:
    ns = "mail"
    _, by_topic = _story(ns, "ann@example.test")
    pools = [("news", Topics.for_pool(ns, "news")), ("promo", Topics.for_pool(ns, "promo"))]
    pools.append(("vip", Topics.for_pool(ns, "vip", routed=True)))
    scope = scopes(ns, pools)
    assert scope == {
        "mailpipe.mail.suppressions": "namespace mail",
        NEVER_MAIL_TOPIC: "never-mail (every namespace)",
        "mailpipe.mail.vip.suppressions": "pool vip only",
    }
    found = held("ANN@example.test", by_topic, scope)
    assert [(h.entry.reason, source_kind(h.entry.source), h.scope_text) for h in found] == [
        ("complaint", "feedback", "namespace mail"),
        ("unsubscribe", "unsubscribe", "namespace mail, list weekly"),
        ("manual", "other", "never-mail (every namespace)"),
    ]
    assert [held_row(h)[1] for h in found] == [
        "feedback-node1:mail/news",
        "unsubscribe:autumn",
        "other: platform-team",
    ]
    assert held("bob@example.test", by_topic, scope) == []


def test_suppressions_filter_by_reason_and_source() -> None:
    _, by_topic = _story("mail", "ann@example.test")
    records = [
        *by_topic["mailpipe.mail.suppressions"][:1],  # the receiver's hard bounce of ann
        *by_topic["mailpipe.mail.suppressions"][2:],  # her unsubscribe from one list
        (
            b"bob@example.test",
            encode(
                Suppression(
                    address="bob@example.test",
                    reason=SuppressionReason.HARD_BOUNCE,
                    time=T0,
                    source="mail/news",  # the relay, at RCPT
                    detail="invalid_recipient: 550 5.1.1 no such user",
                )
            ),
        ),
        (
            b"carol@example.test",
            encode(
                Suppression(
                    address="carol@example.test",
                    reason=SuppressionReason.MANUAL,
                    time=T0,
                    source=SOURCE,
                )
            ),
        ),
    ]
    entries = sorted(live_suppressions(records).values(), key=lambda e: e.key)

    def keys(reason: str | None, source: str | None) -> list[str]:
        return [e.key for e in selected(entries, reason, source)]

    assert keys("hard_bounce", None) == ["ann@example.test", "bob@example.test"]
    assert keys("hard_bounce", "feedback") == ["ann@example.test"]
    assert keys("hard_bounce", "relay") == ["bob@example.test"]
    assert keys(None, "unsubscribe") == ["ann@example.test list=weekly"]
    assert keys(None, "kubectl") == ["carol@example.test"]
    assert keys(None, "FEEDBACK-NODE1") == ["ann@example.test"]  # part of the source text
    assert keys("unsubscribe", "relay") == []
    with pytest.raises(UsageError) as err:
        checked_reason("bounce")
    assert str(err.value) == (
        "unknown reason 'bounce': one of hard_bounce, complaint, unsubscribe, manual, undecodable"
    )


# -- against Kafka and the API server ----------------------------------------------


def _pool(namespace: str, name: str, bootstrap: str) -> str:
    doc = yaml.safe_load(pool_manifest(name, namespace, bootstrap, "unused"))
    del doc["spec"]["kafka"]["topicPrefix"]  # the default: mailpipe.<namespace>.<name>
    return yaml.safe_dump(doc)


@pytest.mark.operator
def test_fate_and_suppressions_read_what_the_receivers_wrote(
    crds: None, cli_env: dict[str, str], namespace: str, kafka_bootstrap: str, unique: str
) -> None:
    for name in ("news", "promo"):
        harness.apply(cli_env, _pool(namespace, name, kafka_bootstrap))
    rcpt = f"ann-{unique}@example.test"
    events, by_topic = _story(namespace, rcpt)
    del by_topic[NEVER_MAIL_TOPIC]  # the platform's: not this test's to write
    shift = time.time() - T0  # today, so retention never takes them
    topics = {f"mailpipe.{namespace}.{p}.events": p for p in ("news", "promo")}
    ensure_topics(kafka_bootstrap, [*topics, *by_topic], partitions=1, replication=1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for e in events:
            pool = "news" if e.campaign == f"{namespace}/spring" else "promo"
            moved = e.model_copy(update={"time": e.time + shift})
            producer.send(f"mailpipe.{namespace}.{pool}.events", key=b"k", value=encode(moved))
        for topic, records in by_topic.items():
            for key, value in records:
                producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()

    # No --pool, no --campaign: every pool and campaign of the namespace.
    out = plugin(cli_env, "fate", rcpt.upper(), "-n", namespace)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:5] == ["TIME", "CAMPAIGN", "SOURCE", "DISPOSITION", "CLASS"]
    bounce = next(line for line in lines if " bounced " in line)
    assert "feedback receiver" in bounce and "invalid_recipient" in bounce, out.stdout
    assert any("one-click" in line and "unsubscribed" in line for line in lines), out.stdout
    assert f"{namespace}/spring: delivered at" in out.stdout
    assert "then bounced (invalid_recipient)" in out.stdout
    assert f"{namespace}/autumn: delivered at" in out.stdout
    held_lines = lines[lines.index("suppressed now:") + 1 :]
    assert held_lines[0].split() == ["REASON", "SOURCE", "SCOPE", "SINCE", "DETAIL"]
    assert f" feedback-node1:{namespace}/news " in held_lines[1]
    assert held_lines[1].startswith("complaint") and f"namespace {namespace}" in held_lines[1]
    assert held_lines[2].startswith("unsubscribe")
    assert f"namespace {namespace}, list weekly" in held_lines[2]

    doc = json.loads(plugin(cli_env, "fate", rcpt, "-n", namespace, "-o", "json").stdout)
    spring = next(f for f in doc["fates"] if f["campaign"] == f"{namespace}/spring")
    assert len(spring["attempts"]) == 2
    assert [(r["source"], r["disposition"]) for r in spring["returned"]] == [
        ("feedback receiver", "bounced"),
        ("feedback receiver", "complained"),
    ]
    assert [s["scope"] for s in doc["suppressed"]] == [
        f"namespace {namespace}",
        f"namespace {namespace}, list weekly",
    ]

    out = plugin(
        cli_env,
        "suppressions",
        "list",
        "--pool",
        "news",
        "-n",
        namespace,
        "--reason",
        "unsubscribe",
        "--source",
        "unsubscribe",
        "-o",
        "json",
    )
    assert out.returncode == 0, out.stderr
    assert [(e["key"], e["list"]) for e in json.loads(out.stdout)] == [
        (f"{rcpt} list=weekly", "weekly")
    ]
    out = plugin(
        cli_env, "suppressions", "list", "--pool", "news", "-n", namespace, "--reason", "x"
    )
    assert out.returncode == 2
    assert "unknown reason 'x': one of hard_bounce, complaint" in one_line_error(out)
