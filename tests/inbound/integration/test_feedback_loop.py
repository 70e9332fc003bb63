"""The loop closed (issue 20, acceptance): a relay sends with a VERP Return-Path,
a real SMTP client returns DSNs, out-of-office replies and ARF complaints to a
`mailpipe feedback` process, and real Kafka carries the events and
suppressions; the relay then skips the suppressed address. Forged, expired and
foreign tokens and other domains are refused at RCPT; oversize and non-report
messages are refused or set aside with a reason."""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailpipe.contracts.feedback_token import (
    Purpose,
    TokenPayload,
    keys_from_directory,
    return_path,
    sign,
)
from mailpipe.devstack.harness import Child
from mailpipe.devstack.procs import free_port
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from tests.conftest import wait_for

from .. import samples as S
from .conftest import Pool

pytestmark = pytest.mark.feedback

FEEDBACK_HOST = "127.0.0.21"  # the bounce domain's MX in this test
DOMAIN = "bounce.sender.test"
WAIT_SECONDS = 60


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "feedback-keys"
    directory.mkdir()
    (directory / "ka").write_bytes(b"feedback-test-key-0123456789abcdef")
    return directory


def connect(port: int) -> smtplib.SMTP:
    return smtplib.SMTP(FEEDBACK_HOST, port, timeout=30)


def listening(port: int) -> bool:
    try:
        with socket.create_connection((FEEDBACK_HOST, port), timeout=1):
            return True
    except OSError:
        return False


def records(pool: Pool, topic: str) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in pool.read(topic) if v]


class Loop:
    def __init__(self, pool: Pool, rx: SMTPReceiver, port: int, server: Child) -> None:
        self.pool, self.rx, self.port, self.server = pool, rx, port, server
        kafka = pool.config.kafka
        self.events_topic = kafka.events_topic
        self.suppressions_topic = kafka.suppressions_topic
        self.dlq_topic = kafka.dlq_topic

    def feedback_events(self) -> list[dict[str, Any]]:
        return [e for e in records(self.pool, self.events_topic) if e.get("relay") == "fb-test"]

    def suppressions(self) -> list[dict[str, Any]]:
        return records(self.pool, self.suppressions_topic)

    def sent(self, recipient: str) -> tuple[str, str]:
        """The Return-Path and trace token the relay sent `recipient`'s message with."""
        for m in self.rx.messages():
            if recipient in m.rcpt_tos:
                parsed = email.message_from_bytes(m.data, policy=email.policy.compat32)
                return m.mail_from, str(parsed["X-Mailpipe-Trace"])
        raise AssertionError(f"nothing sent to {recipient}")

    def send(self, rcpt: str, data: bytes, mail_from: str = "") -> tuple[int, bytes]:
        with connect(self.port) as smtp:
            smtp.ehlo("mx.reporter.test")
            smtp.mail(mail_from)
            code, text = smtp.rcpt(rcpt)
            assert code == 250, text
            return smtp.data(data)


@pytest.fixture
def loop(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., Child],
    feedback_servers: Callable[[Pool], Child],
    keys: Path,
) -> Loop:
    port = free_port(FEEDBACK_HOST)
    rx, pool = routed_pool(
        feedback={
            "bounce_domain": DOMAIN,
            "keys_path": str(keys),
            "listen_address": FEEDBACK_HOST,
            "listen_port": port,
            "metrics_port": 0,
        }
    )
    relay = relays(pool)
    server = feedback_servers(pool)
    wait_for(lambda: listening(port), WAIT_SECONDS, "the feedback receiver listening", server)
    for rcpt in ("ann@d.test", "bob@d.test", "cat@d.test"):
        pool.send(rcpt)
    pool.flush()
    wait_for(lambda: len(rx.messages()) == 3, WAIT_SECONDS, "three messages sent", relay)
    return Loop(pool, rx, port, server)


def test_a_dsn_bounces_with_its_class_suppresses_and_the_next_send_skips_the_address(
    loop: Loop,
) -> None:
    rp, trace = loop.sent("ann@d.test")
    assert rp.startswith("b-") and rp.endswith("@" + DOMAIN)
    code, _ = loop.send(rp, S.fill(S.POSTFIX_DSN, rp=rp, rcpt="ann@d.test", trace=trace))
    assert code == 250
    wait_for(lambda: loop.feedback_events(), WAIT_SECONDS, "the bounced event", loop.server)
    (event,) = loop.feedback_events()
    assert (event["disposition"], event["recipient"], event["bounce_class"]) == (
        "bounced",
        "ann@d.test",
        "invalid_recipient",
    )
    assert event["campaign"] == "test/camp" and event["enhanced_code"] == "5.1.1"
    wait_for(lambda: loop.suppressions(), WAIT_SECONDS, "the suppression")
    (sup,) = loop.suppressions()
    assert (sup["address"], sup["reason"]) == ("ann@d.test", "hard_bounce")

    # A later campaign to that address skips it (the relay follows the suppressions).
    loop.pool.send("ann@d.test", campaign="test/later")
    loop.pool.flush()

    def skipped() -> bool:
        return any(
            e["disposition"] == "suppressed" and e["recipient"] == "ann@d.test"
            for e in records(loop.pool, loop.events_topic)
        )

    wait_for(skipped, WAIT_SECONDS, "the later send suppressed")
    assert sum("ann@d.test" in m.rcpt_tos for m in loop.rx.messages()) == 1


def test_an_out_of_office_reply_changes_nothing_and_an_arf_report_is_a_complaint(
    loop: Loop,
) -> None:
    bob_rp, bob_trace = loop.sent("bob@d.test")
    code, _ = loop.send(
        bob_rp, S.fill(S.OUT_OF_OFFICE, rp=bob_rp, rcpt="bob@d.test", trace=bob_trace)
    )
    assert code == 250
    # The complaint comes after on the same receiver: once its event is on the
    # topic, the out-of-office reply before it has been decided too.
    cat_rp, cat_trace = loop.sent("cat@d.test")
    arf = S.fill(S.REDACTED_ARF, rp=cat_rp, rcpt="cat@d.test", trace=cat_trace, fbl=f"fbl@{DOMAIN}")
    assert loop.send(f"fbl@{DOMAIN}", arf, mail_from="jmrp@microsoft.test")[0] == 250
    wait_for(lambda: loop.feedback_events(), WAIT_SECONDS, "the complaint", loop.server)
    (event,) = loop.feedback_events()
    assert (event["disposition"], event["recipient"]) == ("complained", "cat@d.test")
    wait_for(lambda: loop.suppressions(), WAIT_SECONDS, "the complaint suppression")
    assert [(s["address"], s["reason"]) for s in loop.suppressions()] == [
        ("cat@d.test", "complaint")
    ]


def test_forged_expired_foreign_and_other_domains_are_refused_at_rcpt(
    loop: Loop, keys: Path
) -> None:
    rp, _ = loop.sent("ann@d.test")
    local, _, _ = rp.partition("@")
    forged = local[:-2] + ("aa" if not local.endswith("aa") else "bb") + "@" + DOMAIN
    held = keys_from_directory(keys)
    old = TokenPayload(
        namespace="test",
        pool=loop.pool.prefix,
        recipient="ann@d.test",
        message_id="m1",
        issued_at=int(time.time()) - 61 * 86400,
    )
    expired = return_path(sign(old, Purpose.BOUNCE, held), DOMAIN)
    other_ns = TokenPayload(
        "other", loop.pool.prefix, "ann@d.test", "m1", issued_at=int(time.time())
    )
    foreign = return_path(sign(other_ns, Purpose.BOUNCE, held), DOMAIN)
    trace_as_rp = return_path(sign(other_ns, Purpose.TRACE, held), DOMAIN)
    cases = {
        forged: (550, b"signature does not verify"),
        expired: (550, b"return path expired"),
        foreign: (550, b"another namespace or pool"),
        trace_as_rp: (550, b"not a return path"),
        f"postmaster@{DOMAIN}": (550, b"no such mailbox"),
        "victim@gmail.test": (550, b"relaying denied"),
    }
    with connect(loop.port) as smtp:
        smtp.ehlo("mx.reporter.test")
        smtp.mail("")
        for rcpt, (code, words) in cases.items():
            got, text = smtp.rcpt(rcpt)
            assert got == code and words in text, (rcpt, got, text)
        assert smtp.rcpt(rp)[0] == 250  # the real one still is taken


def test_oversize_is_refused_and_a_non_report_is_set_aside_with_its_reason(loop: Loop) -> None:
    rp, _ = loop.sent("ann@d.test")
    with connect(loop.port) as smtp:
        smtp.ehlo("mx.reporter.test")
        code, text = smtp.mail("", ["SIZE=52428800"])  # a 50 MB DSN, announced
        assert code == 552, text
        smtp.rset()
        smtp.mail("")
        smtp.rcpt(rp)
        code, _ = smtp.data(b"Subject: x\r\n\r\n" + (b"z" * 998 + b"\r\n") * 2100)
        assert code == 552  # 2 MB sent without SIZE: refused after DATA, not parsed
    code, _ = loop.send(rp, S.fill(S.NOT_A_REPORT, rp=rp, rcpt="ann@d.test"), "someone@else.test")
    assert code == 250  # taken, so the sender does not retry it, and set aside
    wait_for(lambda: records(loop.pool, loop.dlq_topic), WAIT_SECONDS, "the DLQ copy")
    (copy,) = records(loop.pool, loop.dlq_topic)
    assert copy["reason"].startswith("not_a_report:") and copy["rcpt_to"] == rp
    assert loop.feedback_events() == [] and loop.suppressions() == []
