"""Fuzzing the DSN and ARF parsers and the classifier (issue 20, acceptance):
anyone can mail the bounce domain, so no input may raise anything but a
`ReportError` from a parser, and the receiver's decision never raises at all:
a message it cannot use is set aside with a fixed reason (the DLQ's)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailpipe.contracts.bounces import BounceClass, default_classifier
from mailpipe.inbound import arf, dsn
from mailpipe.inbound.feedback import Kind
from mailpipe.inbound.mime import ReportError

from .. import samples as S
from .test_reports import NOW, message, payload, receiver

SEEDS = [
    message(t)
    for t in (
        S.POSTFIX_DSN,
        S.EXIM_DSN,
        S.EXCHANGE_DSN,
        S.GMAIL_DSN,
        S.QMAIL_BOUNCE,
        S.YAHOO_ARF,
        S.REDACTED_ARF,
        S.OUT_OF_OFFICE,
    )
]
REASONS = {"not_a_report", "malformed", "bomb", "too_large", "unattributed"}


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real report with bytes cut, replaced or inserted: the near-misses a
    broken MTA or an attacker sends, which random bytes rarely reach."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["cut", "insert", "replace"]))
        chunk = draw(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from(
                    [b"\r\n\r\n", b"--", b";", b":", b"=?utf-8?q?", b"Action: failed\r\n", b"\x00"]
                ),
            )
        )
        if op == "cut":
            del data[at : at + draw(st.integers(1, 200))]
        elif op == "insert":
            data[at:at] = chunk
        else:
            data[at : at + len(chunk)] = chunk
    return bytes(data)


inputs = st.one_of(st.binary(max_size=2000), mutated())


def parsed_or_refused(parse: object, data: bytes) -> None:
    try:
        parse(data)  # type: ignore[operator]
    except ReportError as exc:
        assert exc.reason in REASONS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs)
def test_the_dsn_parser_raises_only_report_errors(data: bytes) -> None:
    parsed_or_refused(dsn.parse, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs)
def test_the_arf_parser_raises_only_report_errors(data: bytes) -> None:
    parsed_or_refused(arf.parse, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs, st.sampled_from(["", "someone@else.test"]), st.booleans())
def test_the_decision_never_raises_and_sets_aside_with_a_known_reason(
    data: bytes, mail_from: str, with_token: bool
) -> None:
    out = receiver().decide(data, payload() if with_token else None, mail_from, NOW)
    if out.kind is Kind.SET_ASIDE:
        assert out.reason in REASONS
        assert out.events == () and out.suppressions == ()


@settings(max_examples=500, deadline=None)
@given(
    st.integers(-1000, 10_000),
    st.one_of(st.none(), st.from_regex(r"\A[0-9x.]{0,12}\Z"), st.text(max_size=12)),
    st.text(max_size=300),
    st.one_of(st.none(), st.text(max_size=10)),
)
def test_the_classifier_classes_any_reply(
    code: int, enhanced: str | None, text: str, stage: str | None
) -> None:
    found = default_classifier().classify(code, enhanced, text, stage)
    assert isinstance(found.bounce_class, BounceClass)
