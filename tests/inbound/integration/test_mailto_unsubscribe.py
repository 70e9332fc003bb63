"""Unsubscribing by mail, end to end (issue 20, item 5): a relay sends with
List-Unsubscribe naming the one-click URL and `mailto:u-<token>@<bounce
domain>`; a real SMTP client mails that address at a `mailpipe feedback`
process; real Kafka has the list suppression and the `unsubscribed` event
when the 250 comes, and the relay then skips the address for that list only.
A bounce to the address unsubscribes nobody; forged and expired tokens are
refused at RCPT."""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from mailpipe.contracts.config import UnsubscribeSettings
from mailpipe.contracts.feedback_token import (
    UNSUBSCRIBE_PREFIX,
    Purpose,
    TokenPayload,
    keys_from_directory,
    return_path,
    sign,
)
from mailpipe.contracts.wire import ListUnsubscribe
from mailpipe.devstack.harness import Child
from mailpipe.devstack.procs import free_port, listening
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from tests.conftest import wait_for
from tests.relay.integration.test_metrics_endpoint import METRICS_HOST, scrape

from .. import samples as S
from .conftest import Pool
from .test_feedback_loop import DOMAIN, FEEDBACK_HOST, WAIT_SECONDS, records

pytestmark = pytest.mark.feedback

BASE = "https://unsubscribe.sender.test/u/"


def _keys(directory: Path, key: bytes) -> Path:
    directory.mkdir()
    (directory / "ka").write_bytes(key)
    return directory


def _mailto(data: bytes) -> str:
    header = str(email.message_from_bytes(data, policy=email.policy.default)["List-Unsubscribe"])
    targets = [t.strip().strip("<>") for t in header.split(",")]
    assert targets[0].startswith(BASE) and targets[1].startswith("mailto:u-"), header
    return targets[1].removeprefix("mailto:")


def test_a_mail_to_the_list_unsubscribe_mailto_unsubscribes_and_a_bounce_to_it_does_not(
    routed_pool: Callable[..., tuple[SMTPReceiver, Pool]],
    relays: Callable[..., Child],
    feedback_servers: Callable[[Pool], Child],
    tmp_path: Path,
) -> None:
    feedback_keys = _keys(tmp_path / "feedback-keys", b"feedback-test-key-0123456789abcdef")
    endpoint_keys = _keys(tmp_path / "unsubscribe-keys", b"unsubscribe-test-key-0123456789abc")
    port, metrics_port = free_port(FEEDBACK_HOST), free_port(METRICS_HOST)
    rx, pool = routed_pool(
        feedback={
            "bounce_domain": DOMAIN,
            "keys_path": str(feedback_keys),
            "listen_address": FEEDBACK_HOST,
            "listen_port": port,
            "metrics_port": 0,
        },
        unsubscribe=UnsubscribeSettings(base_url=BASE, keys_dir=str(endpoint_keys)),
        metrics_port=metrics_port,
        metrics_address=METRICS_HOST,
    )
    relay = relays(pool)
    server = feedback_servers(pool)
    wait_for(lambda: listening(FEEDBACK_HOST, port), WAIT_SECONDS, "the receiver", server)
    ann = f"ann-{uuid.uuid4().hex[:8]}@d.test"
    news = ListUnsubscribe(endpoint=True, list="news")
    pool.send(ann, list_unsubscribe=news)
    pool.flush()
    wait_for(lambda: len(rx.messages()) == 1, WAIT_SECONDS, "the first message", relay)
    address = _mailto(rx.messages()[0].data)
    kafka = pool.config.kafka

    # Refused at RCPT, saying why: a tampered token and an expired one.
    local, _, _ = address.partition("@")
    forged = local[:-2] + ("bb" if local.endswith("aa") else "aa") + "@" + DOMAIN
    old = TokenPayload("test", pool.prefix, ann, "m1", issued_at=int(time.time()) - 61 * 86400)
    held = keys_from_directory(feedback_keys)
    expired = return_path(sign(old, Purpose.UNSUBSCRIBE, held), DOMAIN, UNSUBSCRIBE_PREFIX)
    with smtplib.SMTP(FEEDBACK_HOST, port, timeout=30) as smtp:
        smtp.ehlo("mx.reporter.test")
        smtp.mail(ann)
        code, text = smtp.rcpt(forged)
        assert (code, b"unsubscribe address signature does not verify" in text) == (550, True)
        code, text = smtp.rcpt(expired)
        assert (code, b"unsubscribe address expired" in text) == (550, True)

        # A bounce to the address (null sender, a DSN naming it): nobody is unsubscribed.
        smtp.rset()
        smtp.mail("")
        assert smtp.rcpt(address)[0] == 250
        assert smtp.data(S.fill(S.POSTFIX_DSN, rp=address, rcpt=address))[0] == 250
        (copy,) = records(pool, kafka.dlq_topic)  # on Kafka when the 250 came
        assert copy["reason"].startswith("not_an_unsubscribe:")

        # Ann's own mail: on Kafka when the 250 comes.
        smtp.rset()
        smtp.mail(ann)
        assert smtp.rcpt(address)[0] == 250
        person = f"From: {ann}\r\nTo: {address}\r\nSubject: unsubscribe\r\n\r\nplease\r\n"
        code, _ = smtp.data(person.encode())
        assert code == 250
    (sup,) = records(pool, kafka.suppressions_topic)
    assert (sup["address"], sup["reason"], sup["list"], sup["detail"]) == (
        ann,
        "unsubscribe",
        "news",
        "mailto",
    )
    unsubscribed = [e for e in pool.events() if e["disposition"] == "unsubscribed"]
    assert [(e["recipient"], e["reason"], e["campaign"]) for e in unsubscribed] == [
        (ann, "mailto", "test/camp")
    ]

    # The relay holds it, then skips ann for the list's records only.
    wait_for(
        lambda: "mailpipe_suppressions_held 1.0" in scrape("/metrics", metrics_port)[1],
        WAIT_SECONDS,
        "the relay holding the unsubscribe",
        relay,
    )
    sent = {
        "news": pool.send(ann, list_unsubscribe=news),
        "offers": pool.send(ann, list_unsubscribe=ListUnsubscribe(endpoint=True, list="offers")),
    }
    pool.flush()

    def outcome(list_name: str) -> list[str]:
        return [e["disposition"] for e in pool.events() if e["message_id"] == sent[list_name]]

    wait_for(lambda: outcome("news") == ["suppressed"], WAIT_SECONDS, "news skipped", relay)
    wait_for(lambda: outcome("offers") == ["delivered"], WAIT_SECONDS, "offers sent", relay)
