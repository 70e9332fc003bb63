"""Issue 10 (Hygiene: property tests for the reply parser): whatever bytes a
peer sends, and however TCP splits them, `ReplyParser` hands out complete
replies or raises `ReplyError` (the session turns it into a lost connection),
never any other exception, and holds a bounded amount of data.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailpipe.relay.delivery.replies import MAX_REPLY_LINE, ReplyError, ReplyParser
from mailpipe.relay.ports import SMTPReply

pytestmark = pytest.mark.security

_codes = st.integers(min_value=200, max_value=599)
_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\r\n"),
    max_size=60,
)
_reply = st.tuples(_codes, st.lists(_text, min_size=1, max_size=4))


def encode(code: int, lines: list[str]) -> bytes:
    out = [f"{code}-{line}\r\n" for line in lines[:-1]] + [f"{code} {lines[-1]}\r\n"]
    return "".join(out).encode()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, start = [], 0
    for p in points:
        chunks.append(data[start:p])
        start = p
    chunks.append(data[start:])
    return chunks


def feed_all(chunks: list[bytes]) -> list[SMTPReply]:
    parser = ReplyParser()
    out: list[SMTPReply] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


@settings(max_examples=150, deadline=None)
@given(replies=st.lists(_reply, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 10_000)))
def test_any_split_of_valid_replies_gives_the_same_replies(
    replies: list[tuple[int, list[str]]], cuts: list[int]
) -> None:
    data = b"".join(encode(code, lines) for code, lines in replies)
    whole = feed_all([data])
    assert [(r.code, r.text) for r in whole] == [
        (code, "\n".join(line.strip() for line in lines)) for code, lines in replies
    ]
    assert feed_all(split(data, cuts)) == whole


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3 * MAX_REPLY_LINE), cuts=st.lists(st.integers(0, 20_000)))
def test_arbitrary_bytes_give_replies_or_a_reply_error(data: bytes, cuts: list[int]) -> None:
    parser = ReplyParser()
    try:
        for chunk in split(data, cuts):
            for r in parser.feed(chunk):
                assert 0 <= r.code <= 999
    except ReplyError:
        return
    assert len(parser._buffer) <= MAX_REPLY_LINE
