"""Issue 22 Deliver 3: MTA-STS (RFC 8461) rules as data, on valid and hostile input.

The TXT record and policy grammar (sections 3.1, 3.2), MX patterns (4.1),
the cache rule (5.1) and what each policy mode asks of a connection; the
parsers only ever raise `InvalidPolicy` whatever bytes a policy host or a
DNS answer holds (a policy host is the destination's, not ours).
"""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailpipe.contracts.config import TLSMode
from mailpipe.relay.delivery.mta_sts import (
    MAX_AGE_LIMIT_SECONDS,
    MAX_POLICY_BYTES,
    Cached,
    InvalidPolicy,
    Policy,
    Step,
    STSMode,
    STSRecord,
    fetched,
    mx_matches,
    next_step,
    parse_policy,
    parse_record,
    sts_plan,
)
from mailpipe.relay.delivery.tls_policy import TLSPlan

pytestmark = pytest.mark.security

GOOD = (
    b"version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\n"
    b"max_age: 86400\r\n"
)


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        (["v=STSv1;id=abc"], "abc"),
        (["v=STSv1;  id=abc ;  ext.x=1;"], "abc"),
        (["some other record", "v=STSv1; id=A1"], "A1"),
        (["v=spf1 -all"], None),
        ([], None),
        (["v=STSv12; id=abc"], None),  # not an STSv1 record at all
    ],
    ids=["rfc", "no-space", "extension", "among-others", "spf-only", "none", "other-version"],
)
def test_txt_records_are_read(texts: list[str], expected: str | None) -> None:
    record = parse_record(texts)
    assert (record.id if record else None) == expected


@pytest.mark.parametrize(
    ("texts", "why"),
    [
        (["v=STSv1; id=a", "v=STSv1; id=b"], "2 STSv1 TXT records"),
        (["v=STSv1;"], "without id"),
        (["v=STSv1; id=" + "a" * 33], "1 to 32"),
        (["v=STSv1; id=abc-def"], "1 to 32"),
        (["v=STSv1; id=a; id=b"], "two id"),
        (["v=STSv1; id=a; junk"], "malformed"),
        (["v=STSv1; id=a; x=has space"], "malformed"),
    ],
    ids=["two-records", "no-id", "long-id", "dash-id", "two-ids", "no-equals", "space-value"],
)
def test_bad_txt_records_mean_no_policy(texts: list[str], why: str) -> None:
    with pytest.raises(InvalidPolicy, match=why):
        parse_record(texts)


def test_a_policy_is_read_with_crlf_or_lf_and_unknown_keys_ignored() -> None:
    expected = Policy(STSMode.ENFORCE, 86400, ("mx1.example.com", "*.example.net"))
    assert parse_policy(GOOD) == expected
    assert parse_policy(GOOD.replace(b"\r\n", b"\n") + b"future_key: x\n") == expected


def test_mode_none_needs_no_mx_and_max_age_is_capped() -> None:
    policy = parse_policy(b"version: STSv1\nmode: none\nmax_age: 9999999999\n")
    assert policy == Policy(STSMode.NONE, MAX_AGE_LIMIT_SECONDS, ())


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (GOOD.replace(b"STSv1", b"STSv2"), "version must be STSv1"),
        (GOOD.replace(b"version: STSv1\r\n", b""), "version must be STSv1"),
        (GOOD.replace(b"enforce", b"strict"), "mode must be"),
        (GOOD.replace(b"86400", b"-1"), "max_age"),
        (GOOD.replace(b"86400", b"12345678901"), "max_age"),
        (GOOD.replace(b"86400", b""), "max_age"),
        (GOOD + b"mode: none\r\n", "mode given twice"),
        (b"version: STSv1\nmode: testing\nmax_age: 10\n", "without any mx"),
        (GOOD + b"mx: *.*.example.org\r\n", "not a host name"),
        (GOOD + b"mx: mail*.example.org\r\n", "not a host name"),
        (GOOD + b"mx: \r\n", "not a host name"),
        (GOOD + b"mx: -bad.example.org\r\n", "not a host name"),
        (GOOD + b"no colon here\r\n", "malformed"),
        (GOOD + b"\xff\xfe: x\r\n", "not UTF-8"),
        (GOOD + b"x" * MAX_POLICY_BYTES, "larger than"),
        (GOOD + b"mx: a.example.org\n" * 101, "more than 100"),
    ],
    ids=[
        "version",
        "no-version",
        "mode",
        "negative-age",
        "long-age",
        "empty-age",
        "two-modes",
        "testing-without-mx",
        "two-wildcards",
        "inner-wildcard",
        "empty-mx",
        "dash-label",
        "no-colon",
        "not-utf8",
        "too-large",
        "too-many-mx",
    ],
)
def test_bad_policies_are_refused_with_the_reason(body: bytes, why: str) -> None:
    with pytest.raises(InvalidPolicy, match=why):
        parse_policy(body)


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.Example.COM.", True),
        ("mail.example.com", "mail2.example.com", False),
        ("*.example.com", "mx.example.com", True),
        ("*.example.com", "MX.EXAMPLE.COM.", True),
        ("*.example.com", "example.com", False),  # the wildcard stands for one label
        ("*.example.com", "a.b.example.com", False),  # exactly one
        ("*.example.com", ".example.com", False),
        ("*.example.com", "mx.example.com.evil.test", False),
        ("*.example.com", "mxexample.com", False),
    ],
)
def test_mx_patterns_match_as_section_4_1_says(pattern: str, host: str, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


POLICY = Policy(STSMode.ENFORCE, 100, ("mx.example.com",))


@pytest.mark.parametrize(
    ("cached", "record", "now", "step"),
    [
        (None, None, 0.0, Step.NO_POLICY),
        (None, STSRecord("a"), 0.0, Step.FETCH),
        (Cached("a", POLICY, 100.0), STSRecord("a"), 50.0, Step.USE_CACHED),
        (Cached("a", POLICY, 100.0), STSRecord("b"), 50.0, Step.FETCH),  # id changed
        (Cached("a", POLICY, 100.0), STSRecord("a"), 150.0, Step.FETCH),  # expired
        (Cached("a", POLICY, 100.0), None, 50.0, Step.USE_CACHED),  # TXT gone: cache holds
        (Cached("a", POLICY, 100.0), None, 150.0, Step.NO_POLICY),
    ],
    ids=["nothing", "new", "current", "id-changed", "expired", "txt-gone", "txt-gone-expired"],
)
def test_the_cache_rule(
    cached: Cached | None, record: STSRecord | None, now: float, step: Step
) -> None:
    assert next_step(cached, record, now) is step


def test_a_fetched_policy_expires_after_its_max_age() -> None:
    entry = fetched(STSRecord("a"), POLICY, 1000.0)
    assert entry.valid(1099.0) and not entry.valid(1100.0)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (STSMode.ENFORCE, TLSPlan(TLSMode.MTA_STS, True, True, False)),
        (STSMode.TESTING, TLSPlan(TLSMode.MTA_STS, True, True, True)),
        (STSMode.NONE, TLSPlan(TLSMode.MTA_STS, True, False, True)),
        (None, TLSPlan(TLSMode.MTA_STS, True, False, True)),
    ],
    ids=["enforce", "testing", "none", "no-policy"],
)
def test_each_policy_mode_has_one_plan(mode: STSMode | None, expected: TLSPlan) -> None:
    policy = None if mode is None else Policy(mode, 10, ("mx.example.com",))
    assert sts_plan(policy) == expected


# --- hostile input: whatever a policy host or a DNS answer holds ------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_are_a_policy_or_invalid_policy(body: bytes) -> None:
    try:
        policy = parse_policy(body)
    except InvalidPolicy:
        return
    assert 0 <= policy.max_age_seconds <= MAX_AGE_LIMIT_SECONDS
    assert policy.mx or policy.mode is STSMode.NONE


_LINE = st.sampled_from(["version: STSv1", "mode: enforce", "mode: testing", "max_age: 60"])
_NOISE = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_LINE, _NOISE, _NOISE.map(lambda t: f"mx: {t}")), max_size=12))
def test_near_valid_policies_never_raise_anything_else(lines: list[str]) -> None:
    with contextlib.suppress(InvalidPolicy):
        parse_policy("\r\n".join(lines).encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_NOISE, _NOISE.map(lambda t: "v=STSv1;" + t)), max_size=4))
def test_any_txt_strings_are_a_record_none_or_invalid(texts: list[str]) -> None:
    try:
        record = parse_record(texts)
    except InvalidPolicy:
        return
    if record is not None:
        assert re.fullmatch(r"[A-Za-z0-9]{1,32}", record.id)


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LABEL, min_size=1, max_size=4), st.lists(_LABEL, min_size=1, max_size=3))
def test_a_wildcard_matches_exactly_one_extra_label(base: list[str], extra: list[str]) -> None:
    pattern = "*." + ".".join(base)
    host = ".".join([*extra, *base])
    assert mx_matches(pattern, host) is (len(extra) == 1)
    assert parse_policy(GOOD + f"mx: {pattern}\r\n".encode()).allows(host) is (len(extra) == 1)
