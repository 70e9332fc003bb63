"""The submission endpoint against the real Kafka and a real relay (issue 20,
item 6): every refusal with its SMTP code, nothing on Kafka for a refused
message, and an accepted one delivered end to end exactly once."""

from __future__ import annotations

import base64
import json
import smtplib
import time
import urllib.request
from collections.abc import Callable

import pytest

from mailpipe.contracts.wire import Suppression, SuppressionReason, encode
from mailpipe.devstack.procs import free_port
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.kafkakit import read_topic
from tests.conftest import wait_for
from tests.relay.integration.conftest import MX_HOST, Pool, RelayProcess

from .conftest import MAX_MESSAGE_BYTES, PASSWORD, Endpoint, message

pytestmark = [pytest.mark.feedback, pytest.mark.relay]

DELIVERY_SECONDS = 90


def outbound(pool: Pool) -> list[dict[str, object]]:
    """The committed records on the pool's outbound topic (the relay reads committed)."""
    return [
        json.loads(v) for _, v in read_topic(pool.bootstrap, pool.config.kafka.outbound_topic) if v
    ]


def plain_auth(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_refusals_each_with_its_code_and_nothing_on_kafka(
    pool_factory: Callable[..., Pool], submission: Callable[..., Endpoint]
) -> None:
    pool = pool_factory()
    metrics_port = free_port()
    ep = submission(pool, metrics_address="127.0.0.1", metrics_port=metrics_port)

    # AUTH before TLS: 538 5.7.11 (RFC 4954 4); the password never crosses in clear
    with ep.plain() as c:
        code, text = c.docmd("AUTH", "PLAIN " + plain_auth("app", PASSWORD))
        assert (code, text[:6]) == (538, b"5.7.11"), (code, text)
        # unauthenticated relaying, in clear: 530 5.7.0
        assert c.mail("news@shop.example")[0] == 530

    # unauthenticated relaying over TLS: MAIL and RCPT refused with 530 5.7.0
    with ep.tls() as c:
        code, text = c.mail("news@shop.example")
        assert (code, text) == (530, b"5.7.0 Authentication required")
        assert c.rcpt("victim@elsewhere.test")[0] == 530

    # wrong password, unknown user: 535 5.7.8
    for user, password in [("app", "wrong"), ("nobody", PASSWORD)]:
        with ep.tls() as c, pytest.raises(smtplib.SMTPAuthenticationError) as err:
            c.login(user, password)
        assert err.value.smtp_code == 535 and err.value.smtp_error.startswith(b"5.7.8")

    with ep.login() as c:
        # foreign sender domain in MAIL FROM: 553 5.7.1
        code, text = c.mail("ceo@bank.example")
        assert code == 553 and text.startswith(b"5.7.1"), text
        c.rset()
        # foreign From: header domain: 550 5.7.1 at DATA
        with pytest.raises(smtplib.SMTPDataError) as data_err:
            c.sendmail("news@shop.example", ["u@d.test"], message(sender="ceo@bank.example"))
        assert data_err.value.smtp_code == 550 and b"bank.example" in data_err.value.smtp_error
        c.rset()
        # oversize, announced (SIZE=) and sent: 552 5.3.4
        code, text = c.mail("news@shop.example", [f"SIZE={MAX_MESSAGE_BYTES + 1}"])
        assert code == 552 and text.startswith(b"5.3.4"), text
        c.rset()
    with ep.login() as c:
        big = message(body="x" * 70 + ("\r\n" + "x" * 70) * (MAX_MESSAGE_BYTES // 70))
        # without SIZE=, the data itself is counted
        assert c.mail("news@shop.example")[0] == 250
        assert c.rcpt("u@d.test")[0] == 250
        code, text = c.data(big)
        assert code == 552 and text.startswith(b"5.3.4"), text

    # a valid message goes through, so the empty topic above means "refused", not "broken"
    with ep.login() as c:
        c.sendmail("news@shop.example", ["u@d.test"], message())
    records = outbound(pool)
    assert len(records) == 1
    assert records[0]["sender"] == "news@shop.example"

    # counted by reason, in the endpoint's own words: no user, address or domain in a label
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as r:
        scraped = r.read().decode()
    for reason in ("unauthenticated", "sender_domain", "from_domain", "too_big"):
        assert f'mailpipe_submission_refused_total{{reason="{reason}"}}' in scraped, reason
    # smtplib tries PLAIN, then LOGIN: two refused attempts per refused client
    assert 'mailpipe_submission_logins_total{result="refused"} 4.0' in scraped
    assert 'mailpipe_submission_refused_total{reason="auth_before_tls"} 1.0' in scraped
    assert 'mailpipe_submission_messages_total{outcome="accepted"} 1.0' in scraped
    assert "bank.example" not in scraped and "nobody" not in scraped


def test_rate_per_user_answers_450_and_counts_only_accepted(
    pool_factory: Callable[..., Pool], submission: Callable[..., Endpoint]
) -> None:
    pool = pool_factory()
    ep = submission(pool)
    with ep.login("slow") as c:
        for i in range(2):
            c.sendmail("n@shop.example", ["u@d.test"], message(message_id=f"<r{i}@shop.example>"))
        code, text = c.mail("n@shop.example")
        assert code == 450 and text.startswith(b"4.7.1"), text
    with ep.login("app") as c:  # another user is not held back
        c.sendmail("n@shop.example", ["u@d.test"], message(message_id="<r9@shop.example>"))
    assert len(outbound(pool)) == 3


def test_a_valid_message_is_delivered_end_to_end_once_per_recipient_over_both_listeners(
    pool_factory: Callable[..., Pool],
    smtp_receiver: Callable[..., SMTPReceiver],
    relays: Callable[..., RelayProcess],
    submission: Callable[..., Endpoint],
) -> None:
    rx = smtp_receiver(MX_HOST, 0)
    route = [{"host": rx.host, "port": rx.port}]
    pool = pool_factory(routes={"d.test": route, "e.test": route})
    relay = relays(pool)
    ep = submission(pool)
    body = "Grüße from the submission endpoint"
    # two recipient domains: two records, one transaction
    with ep.login() as c:
        refused = c.sendmail(
            "news@shop.example",
            ["a@d.test", "b@e.test"],
            message(to="a@d.test, b@e.test", body=body).encode(),
        )
        assert refused == {}
    # implicit TLS (465): the same login, another message
    with smtplib.SMTP_SSL("localhost", ep.implicit_port, context=ep.context(), timeout=60) as c:
        c.login("app", PASSWORD)
        c.sendmail("news@shop.example", ["c@d.test"], message(message_id="<m2@shop.example>"))
    wait_for(lambda: len(rx.recipients()) >= 3, DELIVERY_SECONDS, "3 deliveries", relay)
    assert sorted(rx.recipients()) == ["a@d.test", "b@e.test", "c@d.test"]
    first = next(m for m in rx.messages() if "a@d.test" in m.rcpt_tos)
    assert body.encode() in first.data and b"Message-ID: <m1@shop.example>" in first.data
    assert first.mail_from == "news@shop.example"
    records = outbound(pool)
    assert len(records) == 3
    assert len({r["id"] for r in records}) == 3


def test_a_retry_after_a_lost_250_is_recognised_and_not_sent_again(
    pool_factory: Callable[..., Pool], submission: Callable[..., Endpoint]
) -> None:
    pool = pool_factory()
    ep = submission(pool)
    msg = message(message_id="<again@shop.example>")
    with ep.login() as c:
        c.sendmail("news@shop.example", ["u@d.test", "v@e.test"], msg)
        c.mail("news@shop.example")
        c.rcpt("u@d.test")
        c.rcpt("v@e.test")
        code, text = c.data(msg)
        assert code == 250 and b"already queued" in text, text
    assert len(outbound(pool)) == 2  # one per domain, once
    # a new endpoint process (a restart) knows it from the ledger topic
    ep.child.stop()
    again = submission(pool, name="submission-2")
    with again.login() as c:
        c.mail("news@shop.example")
        c.rcpt("u@d.test")
        c.rcpt("v@e.test")
        code, text = c.data(msg)
        assert code == 250 and b"already queued" in text, text
    assert len(outbound(pool)) == 2


@pytest.mark.parametrize("mode", ["refuse", "drop"])
def test_suppressed_recipients_are_refused_or_dropped_as_the_pool_says(
    mode: str, pool_factory: Callable[..., Pool], submission: Callable[..., Endpoint]
) -> None:
    pool = pool_factory()
    gone = Suppression(
        address="gone@d.test", reason=SuppressionReason.HARD_BOUNCE, time=time.time()
    )
    pool.producer.send(pool.config.kafka.suppressions_topic, key=b"gone@d.test", value=encode(gone))
    pool.flush()
    ep = submission(pool, suppressed_recipients=mode)
    with ep.login() as c:
        c.mail("news@shop.example")
        code, text = c.rcpt("Gone@d.test")
        if mode == "refuse":
            assert code == 550 and text.startswith(b"5.7.1") and b"hard_bounce" in text, text
        else:
            assert code == 250
        assert c.rcpt("ok@d.test")[0] == 250
        assert c.data(message())[0] == 250
    records = outbound(pool)
    assert [[r["address"] for r in rec["recipients"]] for rec in records] == [["ok@d.test"]]


def test_a_message_kafka_cannot_hold_is_refused_for_good_not_451_for_ever(
    pool_factory: Callable[..., Pool], submission: Callable[..., Endpoint]
) -> None:
    """Under the SMTP size limit but over the topic's record limit once encoded:
    a 451 would make the client retry a message Kafka will never take."""
    pool = pool_factory()
    ep = submission(pool, max_message_bytes=4 * 1024 * 1024)  # the record limit stays 1 MiB
    big = message(body=("y" * 998 + "\r\n") * 1100)  # about 1.1 MB
    with ep.login() as c:
        assert c.mail("news@shop.example")[0] == 250
        assert c.rcpt("u@d.test")[0] == 250
        code, text = c.data(big)
        assert code == 552 and text.startswith(b"5.3.4") and b"encoded" in text, (code, text)
        c.rset()
        c.sendmail("news@shop.example", ["u@d.test"], message())  # the endpoint carries on
    assert len(outbound(pool)) == 1
