"""`mailpipe.relay.addresses`: one ASCII spelling of every destination domain.

Property: for any text, `ascii_domain` either refuses it with `InvalidDomain`
or returns a lower-case ASCII name within RFC 1035's limits that dnspython
accepts and that maps to itself, so the resolver never raises on a name that
passed (issue 10 finding 3: LabelTooLong, EmptyLabel, NameTooLong froze a
partition).
"""

from __future__ import annotations

import dns.name
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailpipe.relay.addresses import (
    MAX_LABEL,
    MAX_NAME,
    AddressLiteral,
    InvalidDomain,
    ascii_domain,
    needs_smtputf8,
    smtp_address,
)

pytestmark = pytest.mark.security

_label = st.text(
    st.sampled_from("abcxyz019-_.ÄüßéЖ中\u200d") | st.characters(codec="utf-8"), max_size=70
)


@settings(max_examples=400, deadline=None)
@given(domain=st.lists(_label, min_size=1, max_size=6).map(".".join))
def test_ascii_domain_refuses_or_gives_a_valid_dns_name(domain: str) -> None:
    try:
        name = ascii_domain(domain)
    except InvalidDomain:
        return
    assert name.isascii() and name == name.lower()
    assert len(name) <= MAX_NAME
    assert all(0 < len(label) <= MAX_LABEL for label in name.split("."))
    dns.name.from_text(name)  # what the resolver does first: must not raise
    assert ascii_domain(name) == name


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("bücher.test", "xn--bcher-kva.test"),
        ("BÜCHER.TEST", "xn--bcher-kva.test"),
        ("x.test.", "x.test"),
        ("X.Test", "x.test"),
    ],
)
def test_known_spellings(domain: str, expected: str) -> None:
    assert ascii_domain(domain) == expected


def test_address_literal_is_its_own_refusal() -> None:
    with pytest.raises(AddressLiteral):
        ascii_domain("[192.0.2.1]")


def test_smtputf8_only_for_a_non_ascii_local_part() -> None:
    assert smtp_address("u@bücher.test") == "u@xn--bcher-kva.test"
    assert not needs_smtputf8("u@bücher.test")
    assert needs_smtputf8("müller@bücher.test")
    assert smtp_address("u@x..test") == "u@x..test"  # invalid: left for the transport to refuse
