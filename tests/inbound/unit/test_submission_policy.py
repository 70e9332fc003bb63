"""The submission endpoint's decisions, as tables: logins, sender and From:
domains, rate, ids and records (mailpipe.inbound.submission_policy)."""

from __future__ import annotations

import io

import pytest

from mailpipe.contracts.submission_users import SubmissionUser
from mailpipe.contracts.wire import decode_record, encode
from mailpipe.inbound.submission_policy import (
    RateLimiter,
    Replies,
    SubmissionConfigError,
    address_domain_allowed,
    build_records,
    check_login,
    hash_password,
    header_from_domains,
    message_key,
    parse_submission_config,
    parse_users,
    submission_id,
)

PASSWORD = "correct horse battery staple"
HASH = hash_password(PASSWORD)
USERS = {
    "app": SubmissionUser(password_hash=HASH, sender_domains=["shop.example"]),
}


@pytest.mark.parametrize(
    ("login", "password", "ok"),
    [
        (b"app", PASSWORD.encode(), True),
        (b"app", b"wrong", False),
        (b"app", b"", False),
        (b"App", PASSWORD.encode(), False),  # names are exact
        (b"nobody", PASSWORD.encode(), False),
        (b"\xff\xfe", b"\xff", False),  # not UTF-8: refused, never an exception
    ],
    ids=["right", "wrong-password", "empty-password", "case", "unknown-user", "binary"],
)
def test_check_login(login: bytes, password: bytes, ok: bool) -> None:
    found = check_login(USERS, login, password)
    assert (found is not None) is ok
    if ok:
        assert found == ("app", USERS["app"])


def test_hash_is_salted_scrypt_and_never_the_password() -> None:
    again = hash_password(PASSWORD)
    assert again != HASH  # a fresh salt each time
    assert HASH.startswith("scrypt$16384$8$1$")
    assert PASSWORD not in HASH
    assert check_login(
        {"a": USERS["app"].model_copy(update={"password_hash": again})}, b"a", PASSWORD.encode()
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("app: {password_hash: plain, sender_domains: [a.example]}", "not a scrypt hash"),
        (f"app: {{password_hash: '{HASH}'}}", "sender_domains"),
        (f"app: {{password_hash: '{HASH}', sender_domains: [a.example], x: 1}}", "x: Extra"),
        ("- a\n- b", "map user names"),
        ("app: [", "not valid YAML"),
    ],
    ids=["plain-password", "no-domains", "unknown-key", "list", "yaml"],
)
def test_bad_users_file_says_which_user_and_why(text: str, error: str) -> None:
    with pytest.raises(SubmissionConfigError, match=error):
        parse_users(text)


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("news@shop.example", True),
        ("news@SHOP.example", True),
        ("news@mail.shop.example", False),  # a subdomain needs its own entry
        ("news@shop.example.evil", False),
        ("news@other.example", False),
        ("@shop.example", False),
        ("shop.example", False),
    ],
)
def test_sender_domain(address: str, ok: bool) -> None:
    assert address_domain_allowed(USERS["app"], address) is ok


@pytest.mark.parametrize(
    ("header", "domains"),
    [
        (b"From: Shop <news@shop.example>\r\n", ["shop.example"]),
        (b"From: a@shop.example, b@Other.Example\r\n", ["shop.example", "other.example"]),
        (b"Subject: none\r\n", None),
        (b"From: a@shop.example\r\nFrom: b@other.example\r\n", None),
        (b"From: undisclosed\r\n", None),
    ],
    ids=["one", "two", "missing", "repeated", "no-domain"],
)
def test_from_header_domains(header: bytes, domains: list[str] | None) -> None:
    assert header_from_domains(header + b"\r\nbody\r\n") == domains


def test_submission_id_is_the_same_for_a_retry_and_differs_otherwise() -> None:
    raw = b"From: n@shop.example\r\nMessage-ID: <1@shop.example>\r\n\r\nhi\r\n"
    key = message_key(raw)
    sid = submission_id("app", "n@shop.example", ["a@x.test", "b@y.test"], key)
    assert sid == submission_id("app", "N@shop.example", ["b@y.test", "a@x.test"], key)
    assert sid != submission_id("app", "n@shop.example", ["a@x.test"], key)
    assert sid != submission_id("other", "n@shop.example", ["a@x.test", "b@y.test"], key)
    other = message_key(raw.replace(b"<1@", b"<2@"))
    assert sid != submission_id("app", "n@shop.example", ["a@x.test", "b@y.test"], other)
    # without a Message-ID, the bytes decide
    assert message_key(b"From: n@shop.example\r\n\r\nhi\r\n").startswith("sha256:")


def test_one_record_per_domain_with_deterministic_ids() -> None:
    raw = "From: n@shop.example\r\n\r\nhi\r\n"
    rcpts = ["a@x.test", "b@y.test", "c@x.test"]
    records = build_records("sub-1", "n@shop.example", rcpts, raw, 1.0)
    assert [(r.id, r.domain, [x.address for x in r.recipients]) for r in records] == [
        ("sub-1.0", "x.test", ["a@x.test", "c@x.test"]),
        ("sub-1.1", "y.test", ["b@y.test"]),
    ]
    assert all(decode_record(encode(r)) == r for r in records)
    assert build_records("sub-1", "n@shop.example", rcpts, raw, 1.0) == records


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_counts_accepted_messages_in_a_sliding_minute() -> None:
    clock = FakeClock()
    rates = RateLimiter(clock)
    for _ in range(3):
        assert rates.allows("app", 3)
        rates.count("app")
    assert not rates.allows("app", 3)
    assert rates.allows("other", 3)  # per user
    clock.now += 59.9
    assert not rates.allows("app", 3)
    clock.now += 0.2
    assert rates.allows("app", 3)


def test_replies_carry_enhanced_codes() -> None:
    assert str(Replies.UNAVAILABLE).startswith("451 4.3.0 ")
    assert str(Replies.TOO_BIG).startswith("552 5.3.4 ")
    assert str(Replies.AUTH_REQUIRED) == "530 5.7.0 Authentication required"
    assert str(Replies.SUPPRESSED).startswith("550 5.7.1 ")


def test_config_ledger_defaults_to_the_pools_prefix() -> None:
    config = parse_submission_config(
        """
pool: ns/news
hostname: submit.example
tls_cert_file: /tls/tls.crt
tls_key_file: /tls/tls.key
users_file: /users/users.yaml
kafka:
  bootstrap_servers: k:9092
  group_id: mailpipe.ns.news.relays
  outbound_topic: mailpipe.ns.news.outbound
  events_topic: mailpipe.ns.news.events
  dlq_topic: mailpipe.ns.news.dlq
  suppressions_topic: mailpipe.ns.suppressions
  control_topic: mailpipe.ns.campaigns
"""
    )
    assert config.ledger == "mailpipe.ns.news.submitted"
    with pytest.raises(SubmissionConfigError, match="max_message_bytes"):
        parse_submission_config("pool: a\nmax_message_bytes: 1\n")


def test_hash_password_command_prints_a_hash_that_logs_in(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailpipe.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pw\n"))
    assert main(["submission", "hash-password", "--password-stdin"]) == 0
    stored = capsys.readouterr().out.strip()
    user = SubmissionUser(password_hash=stored, sender_domains=["a.example"])
    assert check_login({"u": user}, b"u", b"s3cret-pw") == ("u", user)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["submission", "hash-password", "--password-stdin"]) == 2
    assert "empty password" in capsys.readouterr().err
