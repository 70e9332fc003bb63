"""Feedback tokens: what a bounce, complaint or unsubscribe carries back."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailpipe.contracts.feedback_token import (
    Purpose,
    TokenError,
    TokenKeys,
    TokenPayload,
    keys_from_secret,
    return_path,
    sign,
    token_of_address,
    verify,
)

NOW = 1_800_000_000
KEYS = TokenKeys({"ka": b"a" * 32}, "ka")
PAYLOAD = TokenPayload(
    namespace="mail",
    pool="marketing",
    recipient="Ann.Example+x@Example.COM",
    message_id="camp-uid-000017",
    campaign="spring",
    variant="b",
    issued_at=NOW,
)


def test_a_token_round_trips_in_the_alphabet_of_local_parts_and_url_paths() -> None:
    token = sign(PAYLOAD, Purpose.BOUNCE, KEYS)
    assert set(token) <= set("abcdefghijklmnopqrstuvwxyz234567.")
    assert verify(token, Purpose.BOUNCE, KEYS, now=NOW + 5) == PAYLOAD
    # A reporting MTA that upper-cases the local part changes nothing.
    assert verify(token.upper(), Purpose.BOUNCE, KEYS, now=NOW) == PAYLOAD


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda t: t[:-2] + ("aa" if t[-2:] != "aa" else "bb"), "forged"),
        (lambda t: t.replace(".", ".a", 1), "forged"),
        (lambda t: "x" + t, "purpose"),
        (lambda t: t.split(".")[0], "malformed"),
        (lambda t: t[:2] + "zz" + t[4:], "unknown_key"),
        (lambda t: "b" * 3000, "malformed"),
        (lambda t: t.rsplit(".", 1)[0] + ".!!!", "malformed"),
    ],
)
def test_a_damaged_token_is_refused_with_its_reason(mangle, reason) -> None:  # type: ignore[no-untyped-def]
    token = sign(PAYLOAD, Purpose.BOUNCE, KEYS)
    with pytest.raises(TokenError) as err:
        verify(mangle(token), Purpose.BOUNCE, KEYS, now=NOW)
    assert err.value.reason == reason


def test_a_bounce_token_cannot_unsubscribe() -> None:
    token = sign(PAYLOAD, Purpose.BOUNCE, KEYS)
    with pytest.raises(TokenError) as err:
        verify(token, Purpose.UNSUBSCRIBE, KEYS, now=NOW)
    assert err.value.reason == "purpose"


def test_expired_and_foreign_tokens_are_refused() -> None:
    token = sign(PAYLOAD, Purpose.UNSUBSCRIBE, KEYS)
    with pytest.raises(TokenError) as err:
        verify(token, Purpose.UNSUBSCRIBE, KEYS, now=NOW + 10, validity_seconds=5)
    assert err.value.reason == "expired"
    with pytest.raises(TokenError) as err:
        verify(token, Purpose.UNSUBSCRIBE, KEYS, now=NOW, namespace="other")
    assert err.value.reason == "foreign"


def test_rotation_keeps_old_tokens_valid_until_their_key_is_removed() -> None:
    old = sign(PAYLOAD, Purpose.UNSUBSCRIBE, KEYS)
    rotated = keys_from_secret({"ka": b"a" * 32, "kb": b"b" * 32})
    assert rotated.current == "kb"
    new = sign(PAYLOAD, Purpose.UNSUBSCRIBE, rotated)
    assert verify(old, Purpose.UNSUBSCRIBE, rotated, now=NOW) == PAYLOAD
    assert verify(new, Purpose.UNSUBSCRIBE, rotated, now=NOW) == PAYLOAD
    after = keys_from_secret({"kb": b"b" * 32})
    with pytest.raises(TokenError) as err:
        verify(old, Purpose.UNSUBSCRIBE, after, now=NOW)
    assert err.value.reason == "unknown_key"


def test_short_keys_and_odd_key_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        TokenKeys({"ka": b"short"}, "ka")
    with pytest.raises(ValueError, match="key id"):
        TokenKeys({"K-1": b"a" * 32}, "K-1")
    with pytest.raises(ValueError, match="no key"):
        keys_from_secret({})


def test_the_return_path_carries_the_token_back() -> None:
    token = sign(PAYLOAD, Purpose.BOUNCE, KEYS)
    address = return_path(token, "bounces.sender.test")
    assert token_of_address(address.upper(), "bounces.sender.test") == token.upper()
    assert token_of_address(address, "other.test") is None
    assert token_of_address("postmaster@bounces.sender.test", "bounces.sender.test") is None


@given(st.text(max_size=300))
def test_no_input_escapes_as_anything_but_a_token_error(text: str) -> None:
    with contextlib.suppress(TokenError):
        verify(text, Purpose.BOUNCE, KEYS, now=NOW)


def test_a_trace_token_is_its_own_purpose() -> None:
    token = sign(PAYLOAD, Purpose.TRACE, KEYS)
    assert verify(token, Purpose.TRACE, KEYS, now=NOW) == PAYLOAD
    with pytest.raises(TokenError):
        verify(token, Purpose.BOUNCE, KEYS, now=NOW)


def test_an_unsubscribe_token_carries_its_list_signed_and_old_tokens_have_none() -> None:
    listed = TokenPayload(**{**PAYLOAD.__dict__, "mailing_list": "newsletter"})
    token = sign(listed, Purpose.UNSUBSCRIBE, KEYS)
    assert verify(token, Purpose.UNSUBSCRIBE, KEYS, now=NOW).mailing_list == "newsletter"
    # without a list the token is the one made before lists existed
    plain = sign(PAYLOAD, Purpose.UNSUBSCRIBE, KEYS)
    assert verify(plain, Purpose.UNSUBSCRIBE, KEYS, now=NOW).mailing_list is None
    assert plain != token
