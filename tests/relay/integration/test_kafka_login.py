"""Relays log in to Kafka as their tenant, and the broker's ACLs hold them to it (issue 11).

A real broker with SCRAM logins and KRaft's StandardAuthorizer, each
namespace's principal granted `contracts.topics.namespace_acls` (what README
tells a platform team to set), and real `mailpipe relay` processes:

- tenant A's relay, logged in as A with SCRAM-SHA-512, delivers its pool's
  records to a loopback receiver;
- tenant B's relay, configured with A's topics and group, is refused by the
  ACLs: `/readyz` names the authorization error, it keeps running (asking
  again) and never reads A's records;
- a wrong password or a missing password file is a readiness reason that
  says so, not a crash loop;
- no relay log contains a password.

Before: the relay had no way to log in (its config refused `security`), so
against this broker it could not even start.
"""

from __future__ import annotations

import base64
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.errors import TopicAuthorizationFailedError

from mailpipe.contracts.config import RelayConfig
from mailpipe.contracts.topics import NEVER_MAIL_TOPIC, Topics
from mailpipe.devstack import procs, samples
from mailpipe.devstack.harness import Child, Children
from mailpipe.devstack.smtp_receiver import SMTPReceiver
from mailpipe.kafkakit import (
    KafkaAccessDenied,
    client_options,
    ensure_topics,
    list_topics,
    probe_access,
)
from tests.conftest import wait_for
from tests.e2e.test_demo import secrets_in
from tests.scram_broker import (
    CLIENT_TIMEOUT_MS,
    DELAY_STEPS,
    MECHANISM,
    OPERATOR,
    PASSWORDS,
    Broker,
    login,
    password_file,
    scram_broker,
)

from .conftest import EGRESS, RETRY

pytestmark = [pytest.mark.relay, pytest.mark.security]
__all__ = ["scram_broker"]  # the module's broker fixture, imported for pytest

DOMAIN = "a-customers.test"
RECORDS = 12
DELIVERY_SECONDS = 90  # a relay's start (replays, group join) plus 12 deliveries, busy machine
# A refused login is reported after the probe's bootstrap timeout (10 s), then
# asked again every ACCESS_RETRY_SECONDS (15 s): two reports within ~60 s.
REFUSAL_SECONDS = 120
MX_HOST = "127.0.0.10"


def _relay_config(
    bootstrap: str, user: str, secret: Path, rx: SMTPReceiver, port: int
) -> RelayConfig:
    """Tenant a's pool 'news' (its topics and group), logged in as `user`."""
    security = login(bootstrap, user, secret).security
    settings = samples.pool_topics(bootstrap, "mailpipe.a.news", DELAY_STEPS, security=security)
    return samples.relay_config(
        "a/news",
        settings,
        [EGRESS],
        retry=RETRY,
        routes={DOMAIN: [{"host": rx.host, "port": rx.port}]},
        metrics_port=port,
        metrics_address="127.0.0.1",
    )


def _readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


@pytest.fixture
def start_relay(tmp_path: Path) -> Iterator[Callable[..., tuple[Child, int]]]:
    with Children(tmp_path) as children:

        def start(name: str, config: RelayConfig) -> tuple[Child, int]:
            path = samples.write_config(config, tmp_path / f"{name}.yaml")
            args = ["relay", "--config", str(path), "--relay-id", name]
            return children.mailpipe(name, args), config.metrics_port

        yield start


def test_relays_log_in_as_their_tenant_and_the_acls_hold_them_to_it(
    scram_broker: Broker,
    smtp_receiver: Callable[..., SMTPReceiver],
    start_relay: Callable[..., tuple[Child, int]],
    tmp_path: Path,
) -> None:
    rx = smtp_receiver(MX_HOST, 0)
    # The platform (the operator's principal) puts tenant a's records on its outbound topic.
    a_topics = Topics.for_pool("a", "news", list(DELAY_STEPS))
    producer = KafkaProducer(**client_options(scram_broker.admin), acks="all")
    try:
        for i in range(RECORDS):
            record = samples.delivery_record(f"r{i}@{DOMAIN}", campaign="a/spring")
            samples.send_record(producer, a_topics.outbound, record)
        producer.flush()
    finally:
        producer.close()

    # Tenant b's relay, configured with a's topics and group: refused, alive, reads nothing.
    b_file = password_file(tmp_path, "b-password", PASSWORDS["mailpipe-b"])
    thief, thief_port = start_relay(
        "relay-b",
        _relay_config(scram_broker.bootstrap, "mailpipe-b", b_file, rx, procs.free_port()),
    )
    # A wrong password and a password file that is not there: said, not crashed.
    wrong = password_file(tmp_path, "wrong-password", "not-the-password")
    locked_out, locked_port = start_relay(
        "relay-wrong",
        _relay_config(scram_broker.bootstrap, "mailpipe-a", wrong, rx, procs.free_port()),
    )
    missing = tmp_path / "no-such-dir" / "password"
    unmounted, unmounted_port = start_relay(
        "relay-unmounted",
        _relay_config(scram_broker.bootstrap, "mailpipe-a", missing, rx, procs.free_port()),
    )

    def reported_twice(port: int, words: str) -> bool:
        """Refused, asked again, refused again: the reason holds, the relay lives on."""
        status, body = _readyz(port)
        times = re.search(r"kafka access: .*\((\d+) times", body)
        return status == 503 and words in body and times is not None and int(times[1]) >= 2

    wait_for(
        lambda: reported_twice(thief_port, "TopicAuthorizationFailedError"),
        REFUSAL_SECONDS,
        f"relay-b refused twice; /readyz: {_readyz(thief_port)}",
        thief,
    )
    body = _readyz(thief_port)[1]
    assert "kafka access: KafkaAccessDenied: TopicAuthorizationFailedError" in body, body
    assert "mailpipe.a.news" in body and "Kafka ACLs" in body, body
    wait_for(
        lambda: reported_twice(locked_port, "KafkaLoginFailed"),
        REFUSAL_SECONDS,
        f"relay-wrong refused twice; /readyz: {_readyz(locked_port)}",
        locked_out,
    )
    body = _readyz(locked_port)[1]
    assert f"refused (SASL_PLAINTEXT {MECHANISM} as mailpipe-a)" in body, body
    assert "check the user name, password" in body, body
    wait_for(
        lambda: reported_twice(unmounted_port, "KafkaCredentialsError"),
        REFUSAL_SECONDS,
        f"relay-unmounted reported twice; /readyz: {_readyz(unmounted_port)}",
        unmounted,
    )
    body = _readyz(unmounted_port)[1]
    assert f"password file (password_file) {missing} cannot be read" in body, body
    for relay in (thief, locked_out, unmounted):
        assert relay.alive(), relay.log_section()
    assert rx.recipients() == []  # b never read a's records; nobody else delivered them

    # Tenant a's own relay, logged in as a: delivers every record.
    a_file = password_file(tmp_path, "a-password", PASSWORDS["mailpipe-a"])
    owner, owner_port = start_relay(
        "relay-a",
        _relay_config(scram_broker.bootstrap, "mailpipe-a", a_file, rx, procs.free_port()),
    )
    wait_for(
        lambda: len(rx.recipients()) >= RECORDS,
        DELIVERY_SECONDS,
        f"a's records delivered; /readyz: {_readyz(owner_port)}",
        owner,
    )
    assert sorted(rx.recipients()) == sorted(f"r{i}@{DOMAIN}" for i in range(RECORDS))
    wait_for(lambda: _readyz(owner_port)[0] == 200, DELIVERY_SECONDS, "relay-a ready", owner)
    assert thief.alive() and _readyz(thief_port)[0] == 503

    # issue 11's guard (tests/e2e/test_demo.py) over these logs: no password in any of them
    secrets = {f"{user}'s password": pw for user, pw in PASSWORDS.items()}
    secrets |= {
        f"{u}'s password, base64": base64.b64encode(p.encode()).decode()
        for u, p in PASSWORDS.items()
    }
    secrets["the wrong password"] = "not-the-password"
    for relay in (thief, locked_out, unmounted, owner):
        relay.request_stop()
    logs = list(tmp_path.rglob("*.log"))
    assert len(logs) >= 4, logs
    leaked = {
        str(f): found for f in logs if (found := secrets_in(f.read_text(errors="replace"), secrets))
    }
    assert not leaked, leaked


def test_the_operators_login_creates_pool_topics_but_never_writes_the_never_mail_list(
    scram_broker: Broker, tmp_path: Path
) -> None:
    """The README's operator ACLs, through kafkakit with the operator's login."""
    password = password_file(tmp_path, "operator-password", PASSWORDS[OPERATOR])
    operator = login(scram_broker.bootstrap, OPERATOR, password)
    topics = Topics.for_pool("c", "news", list(DELAY_STEPS))
    created = ensure_topics(operator, topics.all(), 1, 1, topics.compacted())
    assert topics.outbound in created and topics.outbound in list_topics(operator)
    producer = KafkaProducer(**client_options(operator), acks="all", max_block_ms=CLIENT_TIMEOUT_MS)
    try:
        producer.send(topics.outbound, b"campaign").get(timeout=CLIENT_TIMEOUT_MS / 1000)
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(NEVER_MAIL_TOPIC, b"x").get(timeout=CLIENT_TIMEOUT_MS / 1000)
    finally:
        producer.close()


def test_the_access_probe_names_a_refused_consumer_group(
    scram_broker: Broker, tmp_path: Path
) -> None:
    """Tenant b's own topics but a's group: the probe says the group, not a timeout."""
    password = password_file(tmp_path, "b-password", PASSWORDS["mailpipe-b"])
    b = login(scram_broker.bootstrap, "mailpipe-b", password)
    own = Topics.for_pool("b", "news", list(DELAY_STEPS))
    probe_access(b, own.all(), "mailpipe.b.news.relays")  # its own: allowed
    with pytest.raises(
        KafkaAccessDenied,
        match=re.escape("GroupAuthorizationFailedError: not authorized for consumer group")
        + " mailpipe\\.a\\.news\\.relays",
    ):
        probe_access(b, own.all(), "mailpipe.a.news.relays")
